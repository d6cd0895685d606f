//! The traffic of the upgrade fixtures: every subject family of the event contract, with the
//! cases a projection treats apart (duplicates, late and linked runs, a mutation's lifecycle
//! across the two parts, redacted content, dead letters). Deterministic given `t0`, so the
//! part the test publishes is the same whenever it runs.

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// One message to publish.
pub struct Message {
    pub subject: String,
    /// Its envelope id, also its `Nats-Msg-Id`.
    pub id: String,
    pub body: Vec<u8>,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

struct Part {
    n: u8,
    base: OffsetDateTime,
    count: u32,
    out: Vec<Message>,
}

impl Part {
    fn at(&self, secs: f64) -> String {
        rfc3339(self.base + time::Duration::seconds_f64(secs))
    }

    fn next_id(&mut self) -> String {
        self.count += 1;
        format!("{:08x}-0000-4000-8000-{:012x}", self.n, self.count)
    }

    fn push(&mut self, subject: String, time: Option<String>, data: Value) -> String {
        let id = self.next_id();
        let mut body = json!({"id": id, "source": "upgrade-fixture", "data": data});
        if let Some(t) = time {
            body["time"] = Value::String(t);
        }
        self.out.push(Message {
            subject,
            id: id.clone(),
            body: serde_json::to_vec(&body).unwrap(),
        });
        id
    }

    fn raw(&mut self, subject: &str, body: &[u8]) {
        let id = self.next_id();
        self.out.push(Message {
            subject: subject.to_owned(),
            id,
            body: body.to_vec(),
        });
    }
}

/// Part 1 (in the committed store) or part 2 (published by the test), an hour apart from `t0`.
pub fn traffic(part: u8, t0: OffsetDateTime) -> Vec<Message> {
    let mut p = Part {
        n: part,
        base: t0 + time::Duration::hours(i64::from(part) - 1),
        count: 0,
        out: Vec::new(),
    };
    topology(&mut p);
    alerts(&mut p);
    results(&mut p);
    heartbeats(&mut p);
    work_items(&mut p);
    let shop = format!("command-{part}");
    p.push(
        "command.deploy.shop".into(),
        Some(p.at(3000.0)),
        json!({"command_id": shop, "workload_id": "shop", "reason": "rollback",
               "reference": "registry.example/shop@sha256:0001", "requested_by": "alice"}),
    );
    dead_letters(&mut p);
    p.out
}

fn topology(p: &mut Part) {
    let status = |p: &mut Part, tid: &str, status: &str, secs: f64| {
        p.push(
            format!("topology.{tid}.status"),
            Some(p.at(secs)),
            json!({"status": status, "name": format!("{tid} lab")}),
        );
    };
    let mutation = |p: &mut Part, tid: &str, id: &str, state: &str, secs: f64| {
        let mut data = json!({"mutation_id": id, "op": "add_decky",
                              "spec": {"decky": format!("{id}-web"), "services": ["http", "ssh"]},
                              "actor": "alice"});
        if state == "failed" {
            data["error"] = json!("port 22 already taken");
        }
        p.push(
            format!("topology.{tid}.mutation.{state}"),
            Some(p.at(secs)),
            data,
        );
    };
    if p.n == 1 {
        status(p, "lab-eu", "active", 0.0);
        status(p, "lab-us", "active", 5.0);
        for (i, state) in ["enqueued", "applying", "applied"].iter().enumerate() {
            mutation(p, "lab-eu", "m-1", state, 10.0 + i as f64);
        }
        mutation(p, "lab-eu", "m-2", "enqueued", 20.0);
        mutation(p, "lab-eu", "m-2", "failed", 21.5);
        mutation(p, "lab-us", "m-3", "enqueued", 30.0);
    } else {
        // m-3 finishes after the upgrade; lab-ap first appears after it.
        mutation(p, "lab-us", "m-3", "applying", 10.0);
        mutation(p, "lab-us", "m-3", "applied", 12.25);
        mutation(p, "lab-eu", "m-4", "enqueued", 15.0);
        status(p, "lab-eu", "degraded", 16.0);
        status(p, "lab-ap", "active", 17.0);
    }
}

fn alerts(p: &mut Part) {
    let n = p.n;
    // A Sentry crash recurring, once re-sent with the same provider id.
    for k in 0..3 {
        let secs = 100.0 + 60.0 * f64::from(k);
        p.push(
            "alert.sentry.shop".into(),
            Some(p.at(secs)),
            json!({"provider_event_id": format!("s-{n}-{k}"), "stage": "firing",
                   "fingerprint": "fp-crash", "alertname": "Crash", "severity": "error",
                   "content": format!("panic in checkout, Authorization: Bearer abc.def.ghi{k}"),
                   "source_url": "https://sentry.example/issues/8841?token=s3cr3tvalue",
                   "source_refs": {"sentry": ["8841"]}, "provider_ts": p.at(secs - 1.0)}),
        );
    }
    p.push(
        "alert.sentry.shop".into(),
        Some(p.at(290.0)),
        json!({"provider_event_id": format!("s-{n}-0"), "stage": "firing",
               "fingerprint": "fp-crash", "alertname": "Crash"}),
    );
    // An Alertmanager group without a fingerprint, firing then resolved.
    for (k, stage) in ["firing", "firing", "resolved"].iter().enumerate() {
        let secs = 400.0 + 30.0 * k as f64;
        p.push(
            "alert.alertmanager.ops".into(),
            Some(p.at(secs)),
            json!({"provider_event_id": format!("am-{n}-{k}"), "stage": stage,
                   "alertname": "DiskFull", "severity": "warning", "namespace": "prod",
                   "target_resource": "node-1",
                   "labels": {"team": "infra", "password": "hunter2"},
                   "annotations": {"summary": "disk 95% full"},
                   "content": "disk /var at 95%"}),
        );
    }
    // SigNoz: a heartbeat and a synthetic alert, neither of which ever recurs.
    p.push(
        "alert.signoz.shop".into(),
        Some(p.at(500.0)),
        json!({"provider_event_id": format!("sz-{n}-hb"), "stage": "heartbeat",
               "alertname": "Watchdog"}),
    );
    p.push(
        "alert.signoz.shop".into(),
        Some(p.at(510.0)),
        json!({"provider_event_id": format!("sz-{n}-syn"), "stage": "firing",
               "alertname": "Latency", "labels": {"synthetic": "true"}}),
    );
}

fn results(p: &mut Part) {
    let n = p.n;
    let kinds = ["traffic", "file", "email", "job"];
    let jobs = [
        "probe-http",
        "sync",
        "mail-thread",
        "backup",
        "probe-dns",
        "rotate",
        "scan",
    ];
    for i in 0..60u32 {
        let kind = kinds[i as usize % kinds.len()];
        let agent = format!("agent-{}", i % 5);
        let started = 600.0 + 41.0 * f64::from(i);
        let mut data = json!({
            "result_id": format!("{n:08x}-1111-4000-8000-{i:012x}"),
            "job_id": jobs[i as usize % jobs.len()],
            "started_at": p.at(started),
        });
        match i % 6 {
            0 => data["exit_code"] = json!(1),
            1 => {
                data["success"] = json!(false);
                data["error"] = json!("SMTP 451 temporary failure");
            }
            _ => data["exit_code"] = json!(0),
        }
        if i % 10 != 9 {
            data["finished_at"] = json!(p.at(started + 0.35 * f64::from(i % 9 + 1)));
        }
        p.push(
            format!("result.{kind}.{agent}"),
            Some(p.at(started + 5.0)),
            data,
        );
    }
    // A result re-sent under another envelope id, across the upgrade: counted once.
    p.push(
        "result.traffic.agent-3".into(),
        Some(p.at(3100.0)),
        json!({"result_id": format!("{:08x}-1111-4000-8000-{:012x}", 1, 3), "exit_code": 0,
               "job_id": "probe-http", "finished_at": p.at(3100.0)}),
    );
    // Deploys, one failed with a secret in its error, one a rollback.
    for j in 0..4u32 {
        let workload = ["shop", "api"][j as usize % 2];
        let secs = 2600.0 + 30.0 * f64::from(j);
        p.push(
            "result.deploy.agent-0".into(),
            Some(p.at(secs)),
            json!({"result_id": format!("d-{n}-{j}"), "workload_id": workload,
                   "reference": format!("registry.example/{workload}@sha256:{:064x}", u32::from(n) * 10 + j),
                   "reason": if j == 3 { "rollback" } else { "deploy" },
                   "exit_code": u32::from(j == 1),
                   "error": if j == 1 { "pull denied for user:hunter2@registry" } else { "" },
                   "finished_at": p.at(secs)}),
        );
    }
    // Runs linked to the crash: by event, by group, and one answering an alert of the next
    // part (it arrives before its alert).
    let linked = [
        (
            json!({"provider": "sentry", "provider_event_id": format!("s-{n}-0")}),
            "succeeded",
            "auto",
            true,
        ),
        (
            json!({"recurrence_key": "fp:fp-crash", "incident_id": format!("inc-{n}")}),
            "failed",
            "manual",
            false,
        ),
        (
            json!({"provider": "sentry", "provider_event_id": format!("s-{}-1", n + 1)}),
            "needs_approval",
            "none",
            false,
        ),
    ];
    for (k, (links, state, repair, verified)) in linked.into_iter().enumerate() {
        let secs = 2800.0 + 20.0 * k as f64;
        p.push(
            "result.job.agent-1".into(),
            Some(p.at(secs)),
            json!({"result_id": format!("run-{n}-{k}"), "job_id": "repair-crash",
                   "exit_code": i32::from(state == "failed"), "finished_at": p.at(secs),
                   "links": links, "run_state": state, "repair": repair,
                   "verified": verified}),
        );
    }
}

fn heartbeats(p: &mut Part) {
    for a in 0..3u32 {
        for k in 0..4u32 {
            let secs = 60.0 * f64::from(k) + f64::from(a);
            let load = f64::from(a * 10 + k) + 0.5;
            p.push(
                format!("heartbeat.agent-{a}"),
                Some(p.at(secs)),
                json!({"hostname": format!("host-{a}"), "version": format!("1.{}", p.n),
                       "labels": {"zone": "eu", "rack": a},
                       "stats": {"cpu_percent": load, "memory_usage": 1_000_000 * (a + 1),
                                 "memory_limit": 8_000_000_000u64},
                       "containers": [{"container_id": format!("c-{a}-web"),
                                       "workload_id": "shop", "role": "web",
                                       "cpu_percent": load / 2.0,
                                       "memory_usage": 500_000 * (k + 1),
                                       "memory_limit": 1_000_000_000u64}]}),
            );
        }
    }
}

fn work_items(p: &mut Part) {
    let key = "fp:fp-crash";
    let wi = orrery::projections::work_items::work_item_id("shop", key);
    let plan = json!({"mode": "suggest", "resolved_mode": "suggest", "action": "open_ticket",
                      "reason": "no automatic repair is linked",
                      "checks": [{"name": "occurrences", "ok": true, "detail": "3 ≥ 2"}],
                      "ready": true});
    let common = json!({"recurrence_key": key, "actor": "alice", "mode": "suggest",
                        "classification": "failed_repair", "occurrences": 3 * p.n,
                        "latest_occurrence_at": p.at(220.0), "plan": plan, "passed": true});
    let dry_run = p.push(
        format!("workitem.shop.{wi}.dry_run"),
        Some(p.at(3200.0)),
        common.clone(),
    );
    let mut handoff = common;
    handoff["handoff_kind"] = json!("ticket_proposal");
    handoff["dry_run_entry_id"] = json!(dry_run);
    handoff["ticket"] = json!({
        "title": "Crash in shop keeps coming back",
        "summary": "panic in checkout, token=abc123",
        "proposed_action": "open_ticket",
        "reason": "the latest repair failed",
        "occurrences": {"total": 3, "duplicates": 1,
                        "first_received_at": p.at(100.0), "latest_received_at": p.at(220.0)},
        "source_url": null,
        "source_refs": {"sentry": ["8841"]},
        "incident_ids": [format!("inc-{}", p.n)],
        "latest_runs": [{"result_id": format!("run-{}-1", p.n), "agent_id": "agent-1",
                         "run_state": "failed", "repair": "manual", "verified": false,
                         "incident_id": null, "recorded_at": p.at(2820.0)}],
    });
    p.push(
        format!("workitem.shop.{wi}.handoff"),
        Some(p.at(3210.0)),
        handoff,
    );
}

fn dead_letters(p: &mut Part) {
    p.raw("result.traffic.agent-0", b"not json at all");
    p.push(
        "result.traffic.agent-0".into(),
        None,
        json!({"job_id": "no-result-id", "exit_code": 0}),
    );
    p.push(
        "heartbeat.agent-0".into(),
        None,
        json!({"stats": {"cpu_percent": -1.0}}),
    );
    p.push(
        "topology.lab-eu.mutation.applied".into(),
        None,
        json!({"op": "no mutation id"}),
    );
    p.push(
        "alert.sentry.shop".into(),
        None,
        json!({"provider_event_id": "no-stage", "content": "password=hunter2"}),
    );
    p.push(
        "workitem.shop.wi_000000000000000000000000.dry_run".into(),
        None,
        json!({"recurrence_key": "fp:other"}),
    );
}
