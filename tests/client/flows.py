"""The main flows of Orrery's API, driven by a client generated from its OpenAPI document.

Run by tests/it/client.rs, which generates the client (openapi-python-client) into CLIENT_DIR
from the daemon's served document and seeds the bus first:

    python -I flows.py CLIENT_DIR BASE_URL TOKEN SECRET

Every call goes through the generated code: its request building, and its parsing of the
answer into the generated models (a field the document types wrongly fails here, as it
would for a user). Prints what the flows saw as one JSON object; any failed expectation
exits non-zero with the reason.
"""

import json
import sys

sys.path.insert(0, sys.argv[1])

from orrery_client import AuthenticatedClient  # noqa: E402
from orrery_client.api.alerts import (  # noqa: E402
    get_alerts_dossier,
    get_alerts_recurrence,
    get_work_item_history,
    get_work_item_preview,
    post_work_item_dry_run,
    post_work_item_handoff,
)
from orrery_client.api.deploys import (  # noqa: E402
    get_workloads,
    get_workloads_wid_deploys,
    post_workloads_wid_rollback,
)
from orrery_client.api.health import get_health_fleet  # noqa: E402
from orrery_client.api.results import get_results_stats  # noqa: E402
from orrery_client.api.topologies import (  # noqa: E402
    get_topologies,
    get_topologies_tid,
    get_topologies_tid_mutations,
    post_topologies_tid_mutations,
)
from orrery_client.models import (  # noqa: E402
    Deploys,
    Dossier,
    DryRunRequest,
    Enqueued,
    EnqueueRequest,
    EnqueueRequestSpec,
    Fleet,
    HandoffRequest,
    Mutations,
    Recurrence,
    ResultStats,
    RollbackRequest,
    RolledBack,
    Topologies,
    Topology,
    WorkItemEntry,
    WorkItemHistory,
    WorkItemPreview,
    WorkItemRef,
    Workloads,
)

_, _, base_url, token, secret = sys.argv
client = AuthenticatedClient(base_url=base_url, token=token, raise_on_unexpected_status=True)


def answer(response, model, status=200):
    """The parsed answer, once it has the status and the generated model expected."""
    body = response.content.decode(errors="replace")
    if response.status_code != status:
        sys.exit(f"expected {status}, got {response.status_code}: {body}")
    if not isinstance(response.parsed, model):
        sys.exit(f"expected a {model.__name__}, parsed {type(response.parsed).__name__}: {body}")
    if secret in body:
        sys.exit(f"an answer holds the seeded secret: {body}")
    return response.parsed


seen = {}

# The badge: failures of the last hour.
stats = answer(get_results_stats.sync_detailed(client=client, since="1h", success=False), ResultStats)
seen["failed_last_hour"] = stats.count

# Fleet health.
fleet = answer(get_health_fleet.sync_detailed(client=client), Fleet)
seen["fleet"] = {"status": fleet.status, "agents": fleet.agents.known}

# Topologies: the list, one topology, an enqueue (projected before the answer), and the
# mutation in its list.
topologies = answer(get_topologies.sync_detailed(client=client), Topologies)
tid = topologies.items[0].id
topology = answer(get_topologies_tid.sync_detailed(tid, client=client), Topology)
spec = EnqueueRequestSpec.from_dict({"replicas": 3, "zone": "osaka"})
enqueued = answer(
    post_topologies_tid_mutations.sync_detailed(
        tid, client=client, body=EnqueueRequest(op="scale", spec=spec), wait=True, idempotency_key="client-1"
    ),
    Enqueued,
    202,
)
mutations = answer(get_topologies_tid_mutations.sync_detailed(tid, client=client), Mutations)
mine = [m for m in mutations.items if m.mutation_id == enqueued.mutation_id]
if len(mine) != 1 or mine[0].op != "scale" or mine[0].spec.to_dict() != {"replicas": 3, "zone": "osaka"}:
    sys.exit(f"the enqueued mutation is not listed as sent: {[m.to_dict() for m in mutations.items]}")
seen["topology"] = {"id": topology.id, "status": topology.status, "mutation": enqueued.mutation_id,
                    "projected": enqueued.projected, "state": mine[0].state}

# A deploy rollback: the workload, its ledger, back to its pinned successful deploy.
workloads = answer(get_workloads.sync_detailed(client=client), Workloads)
wid = workloads.items[0].workload_id
deploys = answer(get_workloads_wid_deploys.sync_detailed(wid, client=client), Deploys)
target = next(d for d in deploys.items if d.success and "@" in (d.reference or ""))
rolled = answer(
    post_workloads_wid_rollback.sync_detailed(wid, client=client, body=RollbackRequest(deploy_id=target.deploy_id)),
    RolledBack,
    202,
)
seen["rollback"] = {"workload": wid, "deploy": target.deploy_id, "reference": rolled.reference,
                    "seq": rolled.seq}

# The alert dossier.
dossier = answer(get_alerts_dossier.sync_detailed(client=client), Dossier)
seen["dossier"] = {"events": dossier.summary.event_count, "redacted": dossier.summary.redacted_total,
                   "recurrence_keys": sorted({str(e.recurrence_key) for e in dossier.items})}

# Recurrence → preview → dry-run → handoff → history.
recurrence = answer(get_alerts_recurrence.sync_detailed(client=client), Recurrence)
group = next(g for g in recurrence.groups if isinstance(g.work_item, WorkItemRef))
work_item = group.work_item.id
preview = answer(get_work_item_preview.sync_detailed(client=client, work_item_id=work_item), WorkItemPreview)
dry_run = answer(
    post_work_item_dry_run.sync_detailed(client=client, body=DryRunRequest(work_item_id=work_item)),
    WorkItemEntry,
    202,
)
if not dry_run.passed:
    sys.exit(f"the dry-run did not pass: {dry_run.to_dict()}")
handoff = answer(
    post_work_item_handoff.sync_detailed(
        client=client, body=HandoffRequest(work_item_id=work_item), idempotency_key="client-2"
    ),
    WorkItemEntry,
    202,
)
history = answer(get_work_item_history.sync_detailed(client=client, work_item_id=work_item), WorkItemHistory)
seen["work_item"] = {
    "id": work_item,
    "classification": preview.work_item.classification,
    "action": preview.plan.action,
    "ticket_title": handoff.ticket.title,
    "history": [e.kind for e in history.entries],
}

print(json.dumps(seen, sort_keys=True))
