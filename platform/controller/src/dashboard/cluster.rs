//! The Cluster page (admin tokens; the API answers 403 to others): hosts, the scheduler
//! leader, each appliance's members (role, generation, lag, last decision), the log
//! aggregators' inputs and every drain's delivery status. The live part reloads itself
//! every 2 seconds.
//!
//! Appliance status is rendered from the JSON each provider reports in `GET /cluster`
//! (`state`, `leader`, `members`), so the dashboard depends on no appliance crate.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use maud::{html, Markup};
use serde_json::Value;

use super::app::drains_table;
use super::client::{Api, Caller, Refusal};
use super::html::{ago, fragment};

/// How often the live part reloads.
const REFRESH: &str = "every 2s";

/// `GET /ui/cluster`
pub async fn page(State(api): State<Api>, caller: Caller) -> Response {
    match live_part(&api, &caller).await {
        Ok(live) => fragment(
            StatusCode::OK,
            html! {
                h1 tabindex="-1" { "Cluster" }
                (live)
            },
        ),
        Err(r) => r.into_response(),
    }
}

/// `GET /ui/cluster/live`
pub async fn live(State(api): State<Api>, caller: Caller) -> Response {
    match live_part(&api, &caller).await {
        Ok(live) => fragment(StatusCode::OK, live),
        Err(r) => fragment(
            r.status,
            html! {
                div id="cluster-live" hx-get="/ui/cluster/live" hx-trigger=(REFRESH) hx-swap="outerHTML" {
                    p class="error" role="alert" { (r.message) }
                }
            },
        ),
    }
}

async fn live_part(api: &Api, caller: &Caller) -> Result<Markup, Refusal> {
    let cluster: Value = api.get(caller, "/cluster").await?;
    let drains: Vec<Value> = api.get(caller, "/drains").await?;
    let now = Utc::now();
    let empty = Vec::new();
    let hosts = cluster["hosts"].as_array().unwrap_or(&empty);
    let aggregators = cluster["log_aggregators"].as_array().unwrap_or(&empty);
    Ok(html! {
        div id="cluster-live" hx-get="/ui/cluster/live" hx-trigger=(REFRESH) hx-swap="outerHTML" {
            p class="meta" { "Updated " (now.format("%H:%M:%S UTC")) " · refreshes every 2 s" }
            section aria-labelledby="hosts-h" {
                h2 id="hosts-h" { "Hosts" }
                p {
                    "Scheduler leader: "
                    @match cluster["scheduler_leader"].as_str() {
                        Some(l) => strong class="scheduler-leader" { (l) },
                        None => strong class="error" { "none" },
                    }
                }
                @if hosts.is_empty() {
                    p class="error" { "No host agent is registered." }
                } @else {
                    div class="scroll" {
                        table class="hosts" {
                            thead { tr { th { "Host" } th { "Agent API" } th { "Job IP" } th { "Up for" } th { "Jobs" } } }
                            tbody {
                                @for h in hosts {
                                    tr {
                                        td { (h["host"]["id"].as_str().unwrap_or_default()) }
                                        td { (h["host"]["api_addr"].as_str().unwrap_or_default()) }
                                        td { (h["host"]["job_ip"].as_str().unwrap_or_default()) }
                                        td {
                                            @if let Some(t) = h["host"]["started_at"].as_str().and_then(|s| s.parse::<chrono::DateTime<Utc>>().ok()) {
                                                (ago(&t, now))
                                            }
                                        }
                                        td { (h["jobs"]) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(providers) = cluster["providers"].as_object() {
                @for (kind, status) in providers {
                    (appliance(kind, status))
                }
            }
            section aria-labelledby="aggregators-h" {
                h2 id="aggregators-h" { "Log aggregator" }
                @if aggregators.is_empty() {
                    p class="error" { "No log aggregator is registered." }
                } @else {
                    div class="scroll" {
                        table class="aggregators" {
                            thead { tr { th { "API" } th { "Syslog input" } th { "Forward input" } } }
                            tbody {
                                @for a in aggregators {
                                    tr {
                                        td { (a["api"].as_str().unwrap_or_default()) }
                                        td { (a["syslog"].as_str().unwrap_or("off")) }
                                        td { (a["forward"].as_str().unwrap_or("off")) }
                                    }
                                }
                            }
                        }
                    }
                }
                h3 { "Drains" }
                (drains_table(&drains, None))
            }
        }
    })
}

/// One appliance's section from its provider's status JSON.
fn appliance(kind: &str, status: &Value) -> Markup {
    let empty = Vec::new();
    let members = status["members"].as_array().unwrap_or(&empty);
    let state = &status["state"];
    html! {
        section class="appliance" aria-labelledby=(format!("appliance-{kind}-h")) {
            h2 id=(format!("appliance-{kind}-h")) { (kind) }
            @if status.is_null() {
                p class="meta" { "Not running on this controller." }
            } @else if let Some(e) = status["error"].as_str() {
                p class="error" role="alert" { (e) }
            } @else {
                p class="appliance-state" {
                    "Cluster " strong { (status["cluster"].as_str().unwrap_or("?")) }
                    @if state.is_null() {
                        " · not initialised yet"
                    } @else {
                        " · generation " strong class="generation" { (state["generation"]) }
                        " · primary " strong class="primary" { (state["primary"].as_str().unwrap_or("?")) }
                        " · sync " strong { (state["sync"].as_str().unwrap_or("none")) }
                    }
                    " · leader key: "
                    @match status["leader"]["member"].as_str() {
                        Some(m) => strong { (m) " at " (status["leader"]["addr"].as_str().unwrap_or("?")) },
                        None => strong class="error" { "free" },
                    }
                }
                div class="scroll" {
                    table class="members" {
                        thead { tr { th { "Member" } th { "Role" } th { "Running" } th { "Streaming" } th { "Generation" } th { "Lag" } th { "Last decision" } } }
                        tbody {
                            @for m in members {
                                @let role = m["role"].as_str().unwrap_or("?");
                                tr data-member=(m["name"].as_str().unwrap_or_default()) {
                                    td { (m["name"].as_str().unwrap_or_default()) br; span class="meta" { (m["pg_addr"].as_str().unwrap_or_default()) } }
                                    td { span class=(format!("role role-{role}")) { (role) } }
                                    td { (yes_no(&m["running"])) }
                                    td { (yes_no(&m["streaming"])) }
                                    td { (m["generation"].as_u64().map(|g| g.to_string()).unwrap_or_else(|| "-".into())) }
                                    td { (m["lag_bytes"].as_u64().map(bytes).unwrap_or_else(|| "-".into())) }
                                    td class="decision" { (m["decision"].as_str().unwrap_or_default()) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn yes_no(v: &Value) -> &'static str {
    if v.as_bool().unwrap_or(false) {
        "yes"
    } else {
        "no"
    }
}

/// `0 B`, `12.0 KiB`, `3.5 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_are_readable() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 20), "5.0 MiB");
    }

    #[test]
    fn members_show_role_generation_lag_and_decision() {
        let status = json!({
            "cluster": "main",
            "state": {"generation": 4, "primary": "pg1", "sync": "pg0"},
            "leader": {"member": "pg1", "addr": "127.0.0.1:5001"},
            "members": [
                {"name": "pg1", "pg_addr": "127.0.0.1:5001", "role": "primary", "running": true,
                 "streaming": false, "generation": 4, "lag_bytes": null, "decision": "primary: holding the key"},
                {"name": "pg0", "pg_addr": "127.0.0.1:5000", "role": "sync", "running": true,
                 "streaming": true, "generation": 4, "lag_bytes": 2048, "decision": "sync of pg1 <ok>"}
            ]
        });
        let m = appliance("postgres", &status).into_string();
        for needle in [
            "generation",
            "role-primary",
            "role-sync",
            "2.0 KiB",
            "sync of pg1 &lt;ok&gt;",
            "127.0.0.1:5001",
        ] {
            assert!(m.contains(needle), "{needle} missing from {m}");
        }
        let off = appliance("postgres", &Value::Null).into_string();
        assert!(off.contains("Not running"), "{off}");
    }
}
