from tests import factories as f


class TestSmoke:
    async def test_create_claim_complete(self, gql):
        pid = await f.project(gql)
        t = await f.task(gql, project_id=pid, requiresReview=False)
        await f.agent(gql, name="w1", skills=["research"])
        claimed = await f.claim(gql, task_id=t["id"], agent="w1")
        assert claimed["status"] == "ASSIGNED"
        done = await f.transition(gql, "submitTask", id=t["id"], agent="w1", summary="ok")
        assert done["status"] == "COMPLETED"
        evs = await f.events(gql, task_id=t["id"])
        assert [e["type"] for e in evs] == ["CREATED", "CLAIMED", "SUBMITTED"]
