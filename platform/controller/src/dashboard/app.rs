//! The App page: one section per concern, each re-rendered by its own actions with the
//! API's refusal shown next to the control that caused it.
//!
//! Sections (`id` = what htmx swaps): `#releases` (current release, history, rollback),
//! `#env` (keys with masked values, reveal one at a time, set, unset), `#processes`
//! (scale form, and `#jobs`, which refreshes itself every 2 s and has a Restart button
//! per job), `#resources` (add, remove, the env names each one set), `#routes` (list,
//! add without TLS, remove; a note for the default route, which the API does not list),
//! `#drains`, `#danger` (destroy, typed confirmation). An action that makes a release
//! answers with the `release-changed` event, on which the other sections reload themselves.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use paas_model::{validate_route, Formation, JobStatus, Release, Resource, RouteError};
use serde::Deserialize;
use serde_json::json;

use super::apps::Whoami;
use super::client::{seg, Api, Caller, Refusal};
use super::html::{ago, error_slot, fragment, time};

/// Event sent (as `HX-Trigger`) after a change that made a new release.
const RELEASE_CHANGED: &str = "release-changed";

/// Event sent after a job was stopped, so the jobs table reloads at once.
const JOBS_CHANGED: &str = "jobs-changed";

/// When the jobs table reloads: every 2 s, and at once after a restart.
const JOBS_TRIGGER: &str = "every 2s, jobs-changed from:body";

/// What `GET /apps/{app}` answers.
#[derive(Deserialize)]
struct AppInfo {
    name: String,
    release: u64,
    created_at: DateTime<Utc>,
}

/// An action's refusal, the control it is about, and what the user typed there (kept
/// in the re-rendered field so it can be corrected rather than retyped).
struct Fault {
    /// Which error slot shows it (`<section>-<control>`).
    slot: &'static str,
    refusal: Refusal,
    /// The refused field's text; never a secret (env values are not kept).
    typed: String,
}

impl Fault {
    fn at(slot: &'static str, refusal: Refusal) -> Self {
        Fault {
            slot,
            refusal,
            typed: String::new(),
        }
    }

    fn keeping(mut self, typed: &str) -> Self {
        self.typed = typed.to_string();
        self
    }

    fn typed_for<'a>(fault: Option<&'a Fault>, slot: &str) -> &'a str {
        fault
            .filter(|f| f.slot == slot)
            .map(|f| f.typed.as_str())
            .unwrap_or("")
    }

    fn message_for(fault: Option<&Fault>, slot: &str) -> Option<String> {
        fault
            .filter(|f| f.slot == slot)
            .map(|f| f.refusal.message.clone())
    }
}

/// The answer to an action: its section re-rendered (with the fault in place, under the
/// API's status), and `release-changed` when it made a release.
fn answer(section: Result<Markup, Refusal>, fault: Option<Fault>, made_release: bool) -> Response {
    let section = match section {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    match fault {
        Some(f) => fragment(f.refusal.status, section),
        None if made_release => (
            [("HX-Trigger", RELEASE_CHANGED)],
            fragment(StatusCode::OK, section),
        )
            .into_response(),
        None => fragment(StatusCode::OK, section),
    }
}

/// `GET /ui/apps/{app}`
pub async fn page(State(api): State<Api>, caller: Caller, Path(app): Path<String>) -> Response {
    match render_page(&api, &caller, &app).await {
        Ok(m) => fragment(StatusCode::OK, m),
        Err(r) => r.into_response(),
    }
}

async fn render_page(api: &Api, caller: &Caller, app: &str) -> Result<Markup, Refusal> {
    let info: AppInfo = api.get(caller, &format!("/apps/{}", seg(app))).await?;
    let who = Whoami::of(api, caller).await?;
    let app = info.name.as_str();
    Ok(html! {
        h1 tabindex="-1" { (app) }
        nav class="tabs" aria-label="App" {
            a href=(format!("#/apps/{app}")) aria-current="page" { "Overview" }
            a href=(format!("#/apps/{app}/logs")) { "Logs" }
        }
        p class="meta" {
            "Release v" (info.release) " · created " (time(&info.created_at))
        }
        (releases_section(api, caller, app, None).await?)
        (env_section(api, caller, app, None).await?)
        (processes_section(api, caller, app, None).await?)
        (resources_section(api, caller, app, &who.resource_kinds, None).await?)
        (routes_section(api, caller, app, None, None).await?)
        (drains_section(api, caller, app, None).await?)
        @if who.is_admin() { (danger_section(app, "", None)) }
    })
}

// ---- releases ---------------------------------------------------------------------

/// `GET /ui/apps/{app}/releases`
pub async fn releases(State(api): State<Api>, caller: Caller, Path(app): Path<String>) -> Response {
    answer(
        releases_section(&api, &caller, &app, None).await,
        None,
        false,
    )
}

/// The rollback form.
#[derive(Deserialize)]
pub struct RollbackForm {
    version: u64,
}

/// `POST /ui/apps/{app}/rollback`
pub async fn rollback(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
    Form(form): Form<RollbackForm>,
) -> Response {
    let done = api
        .act(
            &caller,
            Method::POST,
            &format!("/apps/{}/rollback", seg(&app)),
            Some(json!({ "version": form.version })),
        )
        .await;
    let fault = done.err().map(|r| Fault::at("releases-rollback", r));
    let ok = fault.is_none();
    answer(
        releases_section(&api, &caller, &app, fault.as_ref()).await,
        fault,
        ok,
    )
}

async fn releases_section(
    api: &Api,
    caller: &Caller,
    app: &str,
    fault: Option<&Fault>,
) -> Result<Markup, Refusal> {
    let info: AppInfo = api.get(caller, &format!("/apps/{}", seg(app))).await?;
    let releases: Vec<Release> = api
        .get(caller, &format!("/apps/{}/releases", seg(app)))
        .await?;
    let current = releases.iter().find(|r| r.version == info.release);
    let now = Utc::now();
    Ok(html! {
        section id="releases" aria-labelledby="releases-h"
            hx-get=(format!("/ui/apps/{app}/releases")) hx-trigger=(format!("{RELEASE_CHANGED} from:body")) hx-swap="outerHTML" {
            h2 id="releases-h" { "Releases" }
            @if let Some(r) = current {
                p class="current" {
                    strong { "Current: v" (r.version) }
                    " — " (r.description)
                    @if !r.processes.is_empty() {
                        " · processes: " (r.processes.keys().cloned().collect::<Vec<_>>().join(", "))
                    }
                }
            }
            (error_slot("releases-rollback-error", Fault::message_for(fault, "releases-rollback").as_deref()))
            div class="scroll" {
                table {
                    thead { tr { th { "Version" } th { "Change" } th { "Created" } th { span class="sr-only" { "Action" } } } }
                    tbody {
                        @for r in &releases {
                            tr {
                                td { "v" (r.version) }
                                td { (r.description) }
                                td title=(time(&r.created_at)) { (ago(&r.created_at, now)) " ago" }
                                td {
                                    @if r.version == info.release {
                                        span class="badge" { "current" }
                                    } @else {
                                        form hx-post=(format!("/ui/apps/{app}/rollback")) hx-target="#releases" hx-swap="outerHTML" {
                                            input type="hidden" name="version" value=(r.version);
                                            button type="submit" aria-describedby="releases-rollback-error" {
                                                "Roll back to v" (r.version)
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

// ---- env --------------------------------------------------------------------------

/// `GET /ui/apps/{app}/env`
pub async fn env(State(api): State<Api>, caller: Caller, Path(app): Path<String>) -> Response {
    answer(env_section(&api, &caller, &app, None).await, None, false)
}

/// The set form.
#[derive(Deserialize)]
pub struct SetForm {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

/// `POST /ui/apps/{app}/env`: sets one variable (a new release).
pub async fn set_env(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
    Form(form): Form<SetForm>,
) -> Response {
    let key = form.key.trim().to_string();
    let done = api
        .act(
            &caller,
            Method::PATCH,
            &format!("/apps/{}/env", seg(&app)),
            Some(json!({ "set": { key.clone(): form.value } })),
        )
        .await;
    let fault = done.err().map(|r| Fault::at("env-set", r).keeping(&key));
    let ok = fault.is_none();
    answer(
        env_section(&api, &caller, &app, fault.as_ref()).await,
        fault,
        ok,
    )
}

/// A form naming one variable.
#[derive(Deserialize)]
pub struct KeyForm {
    key: String,
    #[serde(default)]
    hide: Option<String>,
}

/// `POST /ui/apps/{app}/env/unset`: removes one variable (a new release).
pub async fn unset_env(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
    Form(form): Form<KeyForm>,
) -> Response {
    let done = api
        .act(
            &caller,
            Method::PATCH,
            &format!("/apps/{}/env", seg(&app)),
            Some(json!({ "unset": [form.key] })),
        )
        .await;
    let fault = done.err().map(|r| Fault::at("env-table", r));
    let ok = fault.is_none();
    answer(
        env_section(&api, &caller, &app, fault.as_ref()).await,
        fault,
        ok,
    )
}

/// `POST /ui/apps/{app}/env/reveal`: one value's cell, shown (or masked again with
/// `hide`). A POST, so that a value is never in a URL or a cache.
pub async fn reveal_env(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
    Form(form): Form<KeyForm>,
) -> Response {
    if form.hide.is_some() {
        return fragment(StatusCode::OK, value_cell(&app, &form.key, None));
    }
    let env: BTreeMap<String, String> =
        match api.get(&caller, &format!("/apps/{}/env", seg(&app))).await {
            Ok(env) => env,
            Err(r) => {
                return fragment(
                    r.status,
                    html! { span class="error" role="alert" { (r.message) } },
                )
            }
        };
    match env.get(&form.key) {
        Some(v) => fragment(StatusCode::OK, value_cell(&app, &form.key, Some(v))),
        None => fragment(
            StatusCode::NOT_FOUND,
            html! { span class="error" role="alert" { (form.key) " is no longer set" } },
        ),
    }
}

/// A value cell: masked with a Reveal button, or shown with a Hide button (both with
/// one id, so htmx keeps the keyboard focus on the toggle across the swap).
fn value_cell(app: &str, key: &str, value: Option<&str>) -> Markup {
    html! {
        form class="cell" hx-post=(format!("/ui/apps/{app}/env/reveal")) hx-target="closest td" hx-swap="innerHTML" {
            input type="hidden" name="key" value=(key);
            @match value {
                Some(v) => {
                    input type="hidden" name="hide" value="1";
                    code class="value" { (v) }
                    button type="submit" class="link" id=(format!("env-toggle-{key}")) aria-label=(format!("Hide {key}")) { "Hide" }
                }
                None => {
                    span class="masked" aria-label="hidden value" { "••••••••" }
                    button type="submit" class="link" id=(format!("env-toggle-{key}")) aria-label=(format!("Reveal {key}")) { "Reveal" }
                }
            }
        }
    }
}

async fn env_section(
    api: &Api,
    caller: &Caller,
    app: &str,
    fault: Option<&Fault>,
) -> Result<Markup, Refusal> {
    // Values are read only to list the keys: none is sent to the browser unless revealed.
    let env: BTreeMap<String, String> = api.get(caller, &format!("/apps/{}/env", seg(app))).await?;
    let set_error = Fault::message_for(fault, "env-set");
    Ok(html! {
        section id="env" aria-labelledby="env-h"
            hx-get=(format!("/ui/apps/{app}/env")) hx-trigger=(format!("{RELEASE_CHANGED} from:body")) hx-swap="outerHTML" {
            h2 id="env-h" { "Environment" }
            (error_slot("env-table-error", Fault::message_for(fault, "env-table").as_deref()))
            @if env.is_empty() {
                p { "No variables set." }
            } @else {
                div class="scroll" {
                    table class="env" {
                        thead { tr { th { "Name" } th { "Value" } th { span class="sr-only" { "Action" } } } }
                        tbody {
                            @for key in env.keys() {
                                tr {
                                    td { code { (key) } }
                                    td { (value_cell(app, key, None)) }
                                    td {
                                        form hx-post=(format!("/ui/apps/{app}/env/unset")) hx-target="#env" hx-swap="outerHTML" {
                                            input type="hidden" name="key" value=(key);
                                            button type="submit" aria-label=(format!("Unset {key}")) { "Unset" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            form class="inline" hx-post=(format!("/ui/apps/{app}/env")) hx-target="#env" hx-swap="outerHTML" hx-disabled-elt="find button" {
                label for="env-key" { "Name" }
                input id="env-key" name="key" value=(Fault::typed_for(fault, "env-set")) required autocomplete="off" aria-describedby="env-set-error"
                    aria-invalid=[set_error.as_ref().map(|_| "true")];
                label for="env-value" { "Value" }
                input id="env-value" name="value" type="password" autocomplete="off";
                button type="submit" { "Set" }
                (error_slot("env-set-error", set_error.as_deref()))
            }
        }
    })
}

// ---- processes --------------------------------------------------------------------

/// `GET /ui/apps/{app}/processes`: the jobs table alone (it polls this).
pub async fn processes(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
) -> Response {
    match jobs_table(&api, &caller, &app).await {
        Ok(m) => fragment(StatusCode::OK, m),
        // Keep polling: a transient failure must not freeze the table.
        Err(r) => fragment(
            r.status,
            html! {
                div id="jobs" hx-get=(format!("/ui/apps/{app}/processes")) hx-trigger=(JOBS_TRIGGER) hx-swap="outerHTML" {
                    p class="error" role="alert" { (r.message) }
                }
            },
        ),
    }
}

/// `POST /ui/apps/{app}/jobs/restart`: stops one job; the scheduler starts a replacement
/// while the formation wants it. Answers the error slot next to the jobs table.
pub async fn restart_job(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
    Form(form): Form<IdForm>,
) -> Response {
    let done = api
        .act(
            &caller,
            Method::DELETE,
            &format!("/apps/{}/jobs/{}", seg(&app), seg(&form.id)),
            None,
        )
        .await;
    match done {
        Ok(()) => (
            [("HX-Trigger", JOBS_CHANGED)],
            fragment(StatusCode::OK, error_slot("jobs-error", None)),
        )
            .into_response(),
        Err(r) => fragment(r.status, error_slot("jobs-error", Some(&r.message))),
    }
}

/// `GET /ui/apps/{app}/scale`: the whole processes section (after a new release).
pub async fn scale_form(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
) -> Response {
    answer(
        processes_section(&api, &caller, &app, None).await,
        None,
        false,
    )
}

/// `POST /ui/apps/{app}/scale`: every `type=count` field of the form.
pub async fn scale(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut counts = BTreeMap::new();
    let mut bad = None;
    for (kind, count) in &form {
        match count.trim().parse::<u32>() {
            Ok(n) => {
                counts.insert(kind.clone(), n);
            }
            Err(_) => {
                bad = Some(Refusal {
                    status: StatusCode::BAD_REQUEST,
                    message: format!("{kind}: {count:?} is not a number of jobs"),
                });
            }
        }
    }
    let done = match bad {
        Some(r) => Err(r),
        None => {
            api.act(
                &caller,
                Method::PUT,
                &format!("/apps/{}/formation", seg(&app)),
                Some(json!({ "processes": counts })),
            )
            .await
        }
    };
    let fault = done.err().map(|r| Fault::at("processes-scale", r));
    answer(
        processes_section(&api, &caller, &app, fault.as_ref()).await,
        fault,
        false,
    )
}

async fn processes_section(
    api: &Api,
    caller: &Caller,
    app: &str,
    fault: Option<&Fault>,
) -> Result<Markup, Refusal> {
    let info: AppInfo = api.get(caller, &format!("/apps/{}", seg(app))).await?;
    let release: Release = api
        .get(
            caller,
            &format!("/apps/{}/releases/{}", seg(app), info.release),
        )
        .await?;
    let formation: Formation = api
        .get(caller, &format!("/apps/{}/formation", seg(app)))
        .await?;
    let error = Fault::message_for(fault, "processes-scale");
    Ok(html! {
        section id="processes" aria-labelledby="processes-h"
            hx-get=(format!("/ui/apps/{app}/scale")) hx-trigger=(format!("{RELEASE_CHANGED} from:body")) hx-swap="outerHTML" {
            h2 id="processes-h" { "Processes" }
            @if release.processes.is_empty() {
                p { "Release v" (release.version) " has no process types: add a release with a Procfile ("
                    code { "paas release add -a " (app) " --procfile Procfile DIR" } ")." }
            } @else {
                form class="scale" hx-post=(format!("/ui/apps/{app}/scale")) hx-target="#processes" hx-swap="outerHTML" hx-disabled-elt="find button" {
                    @for (kind, command) in &release.processes {
                        div class="field" {
                            label for=(format!("scale-{kind}")) title=(command) { (kind) }
                            input id=(format!("scale-{kind}")) name=(kind) type="number" min="0" max="100" required
                                value=(formation.processes.get(kind).copied().unwrap_or(0))
                                aria-describedby="processes-scale-error";
                        }
                    }
                    button type="submit" { "Scale" }
                    (error_slot("processes-scale-error", error.as_deref()))
                }
            }
            (error_slot("jobs-error", None))
            (jobs_table(api, caller, app).await?)
        }
    })
}

async fn jobs_table(api: &Api, caller: &Caller, app: &str) -> Result<Markup, Refusal> {
    let jobs: Vec<JobStatus> = api.get(caller, &format!("/apps/{}/jobs", seg(app))).await?;
    let now = Utc::now();
    Ok(html! {
        div id="jobs" hx-get=(format!("/ui/apps/{app}/processes")) hx-trigger=(JOBS_TRIGGER) hx-swap="outerHTML" {
            @if jobs.is_empty() {
                p { "No jobs running." }
            } @else {
                div class="scroll" {
                    table class="jobs" {
                        thead { tr { th { "Job" } th { "Type" } th { "State" } th { "Host" } th { "Release" } th { "Up for" } th { "Restarts" } th { "Note" } th { span class="sr-only" { "Action" } } } }
                        tbody {
                            @for j in &jobs {
                                @let state = serde_json::to_value(j.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
                                tr data-job=(j.id) {
                                    td { code { (j.id) } }
                                    td { (j.process_type) }
                                    td { span class=(format!("state state-{state}")) { (state) } }
                                    td { (j.host) }
                                    td { "v" (j.release) }
                                    td { @if let Some(t) = &j.started_at { (ago(t, now)) } }
                                    td { (j.restarts) }
                                    td { (j.message) }
                                    td {
                                        // The id lets htmx give the focus back after each refresh.
                                        form hx-post=(format!("/ui/apps/{app}/jobs/restart")) hx-target="#jobs-error" hx-swap="outerHTML" {
                                            input type="hidden" name="id" value=(j.id);
                                            button type="submit" id=(format!("restart-{}", j.id)) aria-label=(format!("Restart job {}", j.id)) aria-describedby="jobs-error" { "Restart" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

// ---- resources --------------------------------------------------------------------

/// `GET /ui/apps/{app}/resources`
pub async fn resources(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
) -> Response {
    let kinds = match Whoami::of(&api, &caller).await {
        Ok(w) => w.resource_kinds,
        Err(r) => return r.into_response(),
    };
    answer(
        resources_section(&api, &caller, &app, &kinds, None).await,
        None,
        false,
    )
}

/// The add-resource form.
#[derive(Deserialize)]
pub struct KindForm {
    #[serde(default)]
    kind: String,
}

/// `POST /ui/apps/{app}/resources`: provisions one resource (a new release).
pub async fn add_resource(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
    Form(form): Form<KindForm>,
) -> Response {
    let done = api
        .act(
            &caller,
            Method::POST,
            &format!("/apps/{}/resources", seg(&app)),
            Some(json!({ "kind": form.kind })),
        )
        .await;
    resource_answer(&api, &caller, &app, done, "resources-add").await
}

/// A form naming one resource or drain.
#[derive(Deserialize)]
pub struct IdForm {
    id: String,
}

/// `POST /ui/apps/{app}/resources/remove`: deprovisions one resource (a new release).
pub async fn remove_resource(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
    Form(form): Form<IdForm>,
) -> Response {
    let done = api
        .act(
            &caller,
            Method::DELETE,
            &format!("/apps/{}/resources/{}", seg(&app), seg(&form.id)),
            None,
        )
        .await;
    resource_answer(&api, &caller, &app, done, "resources-table").await
}

async fn resource_answer(
    api: &Api,
    caller: &Caller,
    app: &str,
    done: Result<(), Refusal>,
    slot: &'static str,
) -> Response {
    let kinds = match Whoami::of(api, caller).await {
        Ok(w) => w.resource_kinds,
        Err(r) => return r.into_response(),
    };
    let fault = done.err().map(|r| Fault::at(slot, r));
    let ok = fault.is_none();
    answer(
        resources_section(api, caller, app, &kinds, fault.as_ref()).await,
        fault,
        ok,
    )
}

async fn resources_section(
    api: &Api,
    caller: &Caller,
    app: &str,
    kinds: &[String],
    fault: Option<&Fault>,
) -> Result<Markup, Refusal> {
    let resources: Vec<Resource> = api
        .get(caller, &format!("/apps/{}/resources", seg(app)))
        .await?;
    let now = Utc::now();
    let add_error = Fault::message_for(fault, "resources-add");
    Ok(html! {
        section id="resources" aria-labelledby="resources-h" {
            h2 id="resources-h" { "Resources" }
            (error_slot("resources-table-error", Fault::message_for(fault, "resources-table").as_deref()))
            @if resources.is_empty() {
                p { "No resources." }
            } @else {
                div class="scroll" {
                    table class="resources" {
                        thead { tr { th { "Resource" } th { "Kind" } th { "Sets" } th { "Added" } th { span class="sr-only" { "Action" } } } }
                        tbody {
                            @for r in &resources {
                                tr {
                                    td { code { (r.id) } }
                                    td { (r.kind) }
                                    td { @for (i, key) in r.env.keys().enumerate() { @if i > 0 { " " } code { (key) } } }
                                    td title=(time(&r.created_at)) { (ago(&r.created_at, now)) " ago" }
                                    td {
                                        form hx-post=(format!("/ui/apps/{app}/resources/remove")) hx-target="#resources" hx-swap="outerHTML" hx-disabled-elt="find button" {
                                            input type="hidden" name="id" value=(r.id);
                                            button type="submit" aria-label=(format!("Remove {}", r.id)) aria-describedby="resources-table-error" { "Remove" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if kinds.is_empty() {
                p class="meta" { "No resource kinds are configured on this controller." }
            } @else {
                form class="inline" hx-post=(format!("/ui/apps/{app}/resources")) hx-target="#resources" hx-swap="outerHTML" hx-disabled-elt="find button" {
                    label for="resource-kind" { "Add resource" }
                    select id="resource-kind" name="kind" aria-describedby="resources-add-error" {
                        @for k in kinds { option value=(k) { (k) } }
                    }
                    button type="submit" { "Add" }
                    (error_slot("resources-add-error", add_error.as_deref()))
                }
            }
        }
    })
}

// ---- routes -----------------------------------------------------------------------

/// A route as `GET /apps/{app}/routes` lists it. The API never returns a private key,
/// and this type has no field that could hold one.
#[derive(Deserialize)]
struct RouteRow {
    id: String,
    domain: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    sticky: bool,
    #[serde(default)]
    tls: bool,
    created_at: DateTime<Utc>,
}

/// The add-route form (no certificate: TLS routes are added with the CLI).
#[derive(Deserialize)]
pub struct RouteForm {
    #[serde(default)]
    domain: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    sticky: Option<String>,
}

impl RouteForm {
    fn path(&self) -> Option<&str> {
        Some(self.path.trim()).filter(|p| !p.is_empty())
    }

    /// Which field a refusal of this form is about: the path when the path alone breaks
    /// the API's rule ([`validate_route`], the same check the API makes), else the domain
    /// (a bad domain, or a domain and path that are already routed).
    fn slot(&self) -> &'static str {
        let domain = self
            .domain
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        match validate_route(&domain, self.path()) {
            Err(RouteError::Path(_)) => "routes-path",
            _ => "routes-domain",
        }
    }
}

/// `GET /ui/apps/{app}/routes`
pub async fn routes(State(api): State<Api>, caller: Caller, Path(app): Path<String>) -> Response {
    answer(
        routes_section(&api, &caller, &app, None, None).await,
        None,
        false,
    )
}

/// `POST /ui/apps/{app}/routes`: adds a route (no release; the routers follow it).
pub async fn add_route(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
    Form(form): Form<RouteForm>,
) -> Response {
    let mut body = json!({ "domain": form.domain.trim(), "sticky": form.sticky.is_some() });
    if let Some(path) = form.path() {
        body["path"] = json!(path);
    }
    let done = api
        .act(
            &caller,
            Method::POST,
            &format!("/apps/{}/routes", seg(&app)),
            Some(body),
        )
        .await;
    let fault = done.err().map(|r| Fault::at(form.slot(), r));
    // A refused form keeps what was typed; an added route clears it.
    let draft = fault.as_ref().map(|_| &form);
    answer(
        routes_section(&api, &caller, &app, fault.as_ref(), draft).await,
        fault,
        false,
    )
}

/// `POST /ui/apps/{app}/routes/remove`
pub async fn remove_route(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
    Form(form): Form<IdForm>,
) -> Response {
    let done = api
        .act(
            &caller,
            Method::DELETE,
            &format!("/apps/{}/routes/{}", seg(&app), seg(&form.id)),
            None,
        )
        .await;
    let fault = done.err().map(|r| Fault::at("routes-table", r));
    answer(
        routes_section(&api, &caller, &app, fault.as_ref(), None).await,
        fault,
        false,
    )
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

async fn routes_section(
    api: &Api,
    caller: &Caller,
    app: &str,
    fault: Option<&Fault>,
    draft: Option<&RouteForm>,
) -> Result<Markup, Refusal> {
    let routes: Vec<RouteRow> = api
        .get(caller, &format!("/apps/{}/routes", seg(app)))
        .await?;
    let now = Utc::now();
    let domain_error = Fault::message_for(fault, "routes-domain");
    let path_error = Fault::message_for(fault, "routes-path");
    Ok(html! {
        section id="routes" aria-labelledby="routes-h" {
            h2 id="routes-h" { "Routes" }
            // The API does not list the default route (each router derives it from its
            // own --domain, which the controller does not know): say so.
            p class="meta" id="routes-default" {
                "Always served at " code { (app) ".<domain>" }
                " (the router's " code { "--domain" } ", " code { (app) ".localhost" }
                " by default) by its " code { "web" } " jobs; that default route is not listed here."
            }
            (error_slot("routes-table-error", Fault::message_for(fault, "routes-table").as_deref()))
            @if routes.is_empty() {
                p { "No routes." }
            } @else {
                div class="scroll" {
                    table class="routes" {
                        thead { tr { th { "Domain" } th { "Path" } th { "Sticky" } th { "TLS" } th { "Added" } th { span class="sr-only" { "Action" } } } }
                        tbody {
                            @for r in &routes {
                                @let path = r.path.as_deref().unwrap_or("/");
                                tr data-route=(r.id) {
                                    td { code { (r.domain) } }
                                    td { code { (path) } }
                                    td class="sticky" { (yes_no(r.sticky)) }
                                    td class="tls" { (yes_no(r.tls)) }
                                    td title=(time(&r.created_at)) { (ago(&r.created_at, now)) " ago" }
                                    td {
                                        form hx-post=(format!("/ui/apps/{app}/routes/remove")) hx-target="#routes" hx-swap="outerHTML" hx-disabled-elt="find button" {
                                            input type="hidden" name="id" value=(r.id);
                                            button type="submit" aria-label=(format!("Remove route {}{}", r.domain, r.path.as_deref().unwrap_or(""))) aria-describedby="routes-table-error" { "Remove" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            form class="inline" hx-post=(format!("/ui/apps/{app}/routes")) hx-target="#routes" hx-swap="outerHTML" hx-disabled-elt="find button" {
                label for="route-domain" { "Domain" }
                input id="route-domain" name="domain" value=(draft.map_or("", |d| d.domain.as_str())) required autocomplete="off"
                    placeholder="shop.example.com" aria-describedby="routes-domain-error" aria-invalid=[domain_error.as_ref().map(|_| "true")];
                (error_slot("routes-domain-error", domain_error.as_deref()))
                label for="route-path" { "Path (optional)" }
                input id="route-path" name="path" value=(draft.map_or("", |d| d.path.as_str())) autocomplete="off"
                    placeholder="/api" aria-describedby="routes-path-error" aria-invalid=[path_error.as_ref().map(|_| "true")];
                (error_slot("routes-path-error", path_error.as_deref()))
                span class="check" {
                    input id="route-sticky" name="sticky" type="checkbox" value="on" checked[draft.is_some_and(|d| d.sticky.is_some())];
                    label for="route-sticky" { "Sticky sessions" }
                }
                button type="submit" { "Add route" }
            }
            p class="meta" {
                "HTTPS routes need a certificate and key, which the dashboard does not take: add them with "
                code { "paas route add -a " (app) " DOMAIN --cert cert.pem --key key.pem" } "."
            }
        }
    })
}

// ---- drains -----------------------------------------------------------------------

/// `GET /ui/apps/{app}/drains`
pub async fn drains(State(api): State<Api>, caller: Caller, Path(app): Path<String>) -> Response {
    answer(drains_section(&api, &caller, &app, None).await, None, false)
}

/// The add-drain form.
#[derive(Deserialize)]
pub struct DrainForm {
    #[serde(default)]
    url: String,
    #[serde(default)]
    index: String,
}

/// `POST /ui/apps/{app}/drains`
pub async fn add_drain(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
    Form(form): Form<DrainForm>,
) -> Response {
    let mut body = json!({ "app": app, "url": form.url.trim() });
    if !form.index.trim().is_empty() {
        body["index"] = json!(form.index.trim());
    }
    let done = api.act(&caller, Method::POST, "/drains", Some(body)).await;
    let fault = done
        .err()
        .map(|r| Fault::at("drains-add", r).keeping(form.url.trim()));
    answer(
        drains_section(&api, &caller, &app, fault.as_ref()).await,
        fault,
        false,
    )
}

/// `POST /ui/apps/{app}/drains/remove`
pub async fn remove_drain(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
    Form(form): Form<IdForm>,
) -> Response {
    let done = api
        .act(
            &caller,
            Method::DELETE,
            &format!("/drains/{}", seg(&form.id)),
            None,
        )
        .await;
    let fault = done.err().map(|r| Fault::at("drains-table", r));
    answer(
        drains_section(&api, &caller, &app, fault.as_ref()).await,
        fault,
        false,
    )
}

/// The drains table, shared with the cluster page (which lists every drain).
pub fn drains_table(rows: &[serde_json::Value], remove_from: Option<&str>) -> Markup {
    html! {
        @if rows.is_empty() {
            p { "No drains." }
        } @else {
            div class="scroll" {
                table class="drains" {
                    thead { tr {
                        th { "Drain" } th { "App" } th { "Sink" } th { "Delivered" } th { "Failed" } th { "Dropped" } th { "Lag" } th { "Last error" }
                        @if remove_from.is_some() { th { span class="sr-only" { "Action" } } }
                    } }
                    tbody {
                        @for d in rows {
                            @let id = d["id"].as_str().unwrap_or_default();
                            @let st = &d["status"];
                            tr {
                                td { code { (id) } }
                                td { (d["app"].as_str().unwrap_or("every app")) }
                                td { (redact_url(d["url"].as_str().unwrap_or_default())) }
                                @if st.is_null() {
                                    td colspan="5" class="meta" { "no status from the aggregator" }
                                } @else {
                                    td class="delivered" { (st["delivered"]) }
                                    td class="failed" { (st["failed"]) }
                                    td class="dropped" { (st["dropped"]) }
                                    td class="lag" { (st["lag"]) }
                                    td { (st["last_error"]["message"].as_str().unwrap_or("")) }
                                }
                                @if let Some(app) = remove_from {
                                    td {
                                        form hx-post=(format!("/ui/apps/{app}/drains/remove")) hx-target="#drains" hx-swap="outerHTML" {
                                            input type="hidden" name="id" value=(id);
                                            button type="submit" aria-label=(format!("Remove drain {id}")) aria-describedby="drains-table-error" { "Remove" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `url` without its userinfo (`https://user:secret@host/` -> `https://***@host/`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

async fn drains_section(
    api: &Api,
    caller: &Caller,
    app: &str,
    fault: Option<&Fault>,
) -> Result<Markup, Refusal> {
    let rows: Vec<serde_json::Value> = api
        .get(caller, &format!("/drains?app={}", seg(app)))
        .await?;
    let add_error = Fault::message_for(fault, "drains-add");
    Ok(html! {
        section id="drains" aria-labelledby="drains-h" {
            h2 id="drains-h" { "Log drains" }
            (error_slot("drains-table-error", Fault::message_for(fault, "drains-table").as_deref()))
            (drains_table(&rows, Some(app)))
            form class="inline" hx-post=(format!("/ui/apps/{app}/drains")) hx-target="#drains" hx-swap="outerHTML" hx-disabled-elt="find button" {
                label for="drain-url" { "Drain URL" }
                input id="drain-url" name="url" value=(Fault::typed_for(fault, "drains-add")) required autocomplete="off" placeholder="https://es:9200, s3://bucket/prefix, syslog+tls://host:6514"
                    aria-describedby="drains-add-error" aria-invalid=[add_error.as_ref().map(|_| "true")];
                label for="drain-index" { "Index (Elasticsearch)" }
                input id="drain-index" name="index" autocomplete="off" placeholder="logs-%Y.%m.%d";
                button type="submit" { "Add drain" }
                (error_slot("drains-add-error", add_error.as_deref()))
            }
        }
    })
}

// ---- destroy ----------------------------------------------------------------------

/// The destroy form: the app's name typed again.
#[derive(Deserialize)]
pub struct DestroyForm {
    #[serde(default)]
    confirm: String,
}

/// `POST /ui/apps/{app}/destroy`: only when the typed name matches; then the glue script
/// is told (`paas:navigate`) to go back to the app list.
pub async fn destroy(
    State(api): State<Api>,
    caller: Caller,
    Path(app): Path<String>,
    Form(form): Form<DestroyForm>,
) -> Response {
    if form.confirm.trim() != app {
        let message = format!("Type {app} exactly to confirm.");
        return fragment(
            StatusCode::BAD_REQUEST,
            danger_section(&app, &form.confirm, Some(&message)),
        );
    }
    match api
        .act(&caller, Method::DELETE, &format!("/apps/{}", seg(&app)), None)
        .await
    {
        Ok(()) => (
            [("HX-Trigger", r##"{"paas:navigate":"#/apps"}"##)],
            fragment(
                StatusCode::OK,
                html! { section id="danger" { p class="notice" role="status" { "App " (app) " destroyed." } } },
            ),
        )
            .into_response(),
        Err(r) => fragment(r.status, danger_section(&app, &form.confirm, Some(&r.message))),
    }
}

fn danger_section(app: &str, typed: &str, error: Option<&str>) -> Markup {
    html! {
        section id="danger" class="danger" aria-labelledby="danger-h" {
            h2 id="danger-h" { "Destroy app" }
            p { "Destroying " strong { (app) } " removes its releases, its jobs and its resources (their databases are dropped)." }
            form class="inline" hx-post=(format!("/ui/apps/{app}/destroy")) hx-target="#danger" hx-swap="outerHTML" {
                label for="destroy-confirm" { "Type " code { (app) } " to confirm" }
                input id="destroy-confirm" name="confirm" value=(typed) autocomplete="off" required
                    aria-describedby="destroy-error" aria-invalid=[error.map(|_| "true")];
                button type="submit" class="danger" { "Destroy " (app) }
                (error_slot("destroy-error", error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{redact_url, RouteForm};

    #[test]
    fn a_refused_route_is_shown_at_the_field_that_broke_the_rule() {
        let slot = |domain: &str, path: &str| {
            RouteForm {
                domain: domain.into(),
                path: path.into(),
                sticky: None,
            }
            .slot()
        };
        assert_eq!(slot("Not a domain!", ""), "routes-domain");
        assert_eq!(slot("bad_domain", "no-slash"), "routes-domain");
        assert_eq!(slot("Shop.Example.com.", "api"), "routes-path");
        assert_eq!(slot("shop.example.com", "/a b"), "routes-path");
        // Valid input refused anyway (already routed): the domain.
        assert_eq!(slot("shop.example.com", " "), "routes-domain");
        assert_eq!(slot("shop.example.com", "/api"), "routes-domain");
    }

    #[test]
    fn drain_urls_lose_their_credentials() {
        let check = |url: &str, want: &str| assert_eq!(redact_url(url), want, "{url}");
        check("https://es:9200", "https://es:9200");
        check("https://u:p@es:9200/x", "https://***@es:9200/x");
        check("s3://bucket/pre@fix", "s3://bucket/pre@fix");
        check("syslog+tls://a:b@logs:6514", "syslog+tls://***@logs:6514");
        check("not a url", "not a url");
    }
}
