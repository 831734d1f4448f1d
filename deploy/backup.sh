#!/usr/bin/env bash
# Back up the Task Service database with pg_dump (custom format, compressed) and keep the
# last KEEP_DAYS days of backups (7 by default). Run it daily, e.g. from cron:
#   15 3 * * *  DATABASE_URL=postgresql://... BACKUP_DIR=/var/backups/task-service /opt/task-service/deploy/backup.sh
# With docker compose (the database publishes no port), dump through the db container:
#   PG_DUMP="docker compose exec -T db pg_dump" deploy/backup.sh postgresql://taskservice@/taskservice
# Restore with deploy/restore.sh (README, "Backups").
#
#   deploy/backup.sh [DATABASE_URL]
#   env: DATABASE_URL (if not given), BACKUP_DIR (./backups), KEEP_DAYS (7), PG_DUMP (pg_dump)
set -euo pipefail

url="${1:-${DATABASE_URL:?give the database URL as the argument or in DATABASE_URL}}"
url="${url/postgresql+asyncpg:\/\//postgresql://}"  # the service's spelling, for libpq
backup_dir="${BACKUP_DIR:-./backups}"
keep_days="${KEEP_DAYS:-7}"
read -r -a pg_dump <<< "${PG_DUMP:-pg_dump}"

case "$keep_days" in
  ''|*[!0-9]*) echo "backup.sh: KEEP_DAYS must be a whole number of days, not '$keep_days'" >&2; exit 2 ;;
esac
mkdir -p "$backup_dir"
target="$backup_dir/task-service-$(date -u +%Y%m%dT%H%M%SZ).dump"
partial="$target.partial"
trap 'rm -f "$partial"' EXIT

# Written under another name first: a failed or interrupted dump never looks like a backup.
"${pg_dump[@]}" --format=custom --no-owner --no-privileges --dbname="$url" > "$partial"
mv "$partial" "$target"
echo "backup.sh: wrote $target ($(du -h "$target" | cut -f1))"

# Keep every backup younger than KEEP_DAYS days, and never delete the one just written.
find "$backup_dir" -maxdepth 1 -name 'task-service-*.dump' -type f -mtime "+$((keep_days - 1))" \
  ! -path "$target" -print -delete | sed 's/^/backup.sh: removed /'
