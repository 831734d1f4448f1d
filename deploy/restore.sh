#!/usr/bin/env bash
# Restore a backup made by deploy/backup.sh into an EMPTY database, in one transaction:
#   createdb -h HOST -U postgres task_service_restored      # or drop and recreate the old one
#   deploy/restore.sh backups/task-service-20260101T031500Z.dump postgresql://USER:PASS@HOST/task_service_restored
# Stop the service (or point it elsewhere) first; start it on the restored database after.
# With docker compose: PG_RESTORE="docker compose exec -T db pg_restore" deploy/restore.sh FILE postgresql://taskservice@/taskservice
#
#   deploy/restore.sh FILE DATABASE_URL      env: PG_RESTORE (pg_restore)
set -euo pipefail

file="${1:?give the backup file}"
url="${2:?give the URL of the empty database to restore into}"
url="${url/postgresql+asyncpg:\/\//postgresql://}"
read -r -a pg_restore <<< "${PG_RESTORE:-pg_restore}"

"${pg_restore[@]}" --exit-on-error --single-transaction --no-owner --no-privileges --dbname="$url" < "$file"
echo "restore.sh: restored $file"
