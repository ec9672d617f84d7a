//! The Apps page: every app the token may see, and (for admin tokens) a form to create
//! one. Destroying lives on the app's own page, behind a typed confirmation.

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use chrono::Utc;
use maud::html;
use paas_model::{App, Scope};
use serde::Deserialize;
use serde_json::json;

use super::client::{Api, Caller, Refusal};
use super::html::{ago, error_slot, fragment, time};

/// What `/status` says about the caller that pages need.
#[derive(Deserialize)]
pub struct Whoami {
    /// The token's scope.
    pub scope: Scope,
    /// Resource kinds the controller can provision.
    #[serde(default)]
    pub resource_kinds: Vec<String>,
}

impl Whoami {
    /// Asks the API who the caller is.
    pub async fn of(api: &Api, caller: &Caller) -> Result<Whoami, Refusal> {
        api.get(caller, "/status").await
    }

    /// Whether the token is an admin token.
    pub fn is_admin(&self) -> bool {
        matches!(self.scope, Scope::Admin)
    }
}

/// The create form as submitted.
#[derive(Deserialize, Default)]
pub struct CreateForm {
    #[serde(default)]
    name: String,
}

/// `GET /ui/apps`
pub async fn page(State(api): State<Api>, caller: Caller) -> Response {
    render(&api, &caller, "", Ok(None)).await
}

/// `POST /ui/apps`: creates the app, or shows the API's reason next to the name field.
pub async fn create(
    State(api): State<Api>,
    caller: Caller,
    Form(form): Form<CreateForm>,
) -> Response {
    let name = form.name.trim().to_string();
    let outcome = api
        .act(
            &caller,
            Method::POST,
            "/apps",
            Some(json!({ "name": name })),
        )
        .await
        .map(|()| Some(format!("Created app {name}.")));
    let keep = if outcome.is_ok() { "" } else { name.as_str() };
    render(&api, &caller, keep, outcome).await
}

/// The page, with `name` in the create field and the outcome of a create (a notice, or
/// the refusal shown next to the field).
async fn render(
    api: &Api,
    caller: &Caller,
    name: &str,
    outcome: Result<Option<String>, Refusal>,
) -> Response {
    let apps: Vec<App> = match api.get(caller, "/apps").await {
        Ok(apps) => apps,
        Err(r) => return r.into_response(),
    };
    let who = match Whoami::of(api, caller).await {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    let (status, notice, error) = match &outcome {
        Ok(notice) => (StatusCode::OK, notice.as_deref(), None),
        Err(r) => (r.status, None, Some(r.message.as_str())),
    };
    let now = Utc::now();
    fragment(
        status,
        html! {
            h1 tabindex="-1" { "Apps" }
            @if who.is_admin() {
                form class="inline" hx-post="/ui/apps" hx-target="#main" hx-disabled-elt="find button" {
                    label for="new-app" { "New app" }
                    input id="new-app" name="name" value=(name) required autocomplete="off"
                        placeholder="lowercase, digits, -" aria-describedby="new-app-error"
                        aria-invalid=[error.map(|_| "true")];
                    button type="submit" { "Create app" }
                    (error_slot("new-app-error", error))
                }
            }
            @if let Some(n) = notice { p class="notice" role="status" { (n) } }
            @if apps.is_empty() {
                p { "No apps yet." }
            } @else {
                table class="apps" {
                    thead { tr { th { "Name" } th { "Release" } th { "Created" } } }
                    tbody {
                        @for a in &apps {
                            tr {
                                td { a href=(format!("#/apps/{}", a.name)) { (a.name) } }
                                td { "v" (a.release) }
                                td title=(time(&a.created_at)) { (ago(&a.created_at, now)) " ago" }
                            }
                        }
                    }
                }
            }
        },
    )
}
