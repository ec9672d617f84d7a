//! `GET /`: the only full page. It holds the header, the sign-in form and an empty
//! `<main>` that the glue script fills with fragments; nothing in it depends on who is
//! asking, so it needs no token.

use axum::response::Html;
use maud::{html, DOCTYPE};

use super::assets;

/// How htmx treats answers: 2xx and 4xx/5xx are swapped (pages re-render with the error
/// next to its cause), 204 is not, and 401 is left to the glue script (back to sign-in).
/// No history cache: it would copy revealed env values into `localStorage`.
const HTMX_CONFIG: &str = r#"{"responseHandling":[{"code":"204","swap":false},{"code":"401","swap":false,"error":true},{"code":"[2345]..","swap":true}],"historyEnabled":false,"historyCacheSize":0,"refreshOnHistoryMiss":false,"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"selfRequestsOnly":true,"defaultSwapStyle":"innerHTML"}"#;

/// `GET /`
pub async fn page() -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    meta name="htmx-config" content=(HTMX_CONFIG);
                    title { "paas" }
                    link rel="stylesheet" href=(assets::url("dashboard.css"));
                    script src=(assets::url("htmx.min.js")) {}
                    script src=(assets::url("dashboard.js")) defer {}
                }
                body {
                    a class="skip" href="#main" { "Skip to content" }
                    header {
                        a class="brand" href="#/apps" { "paas" }
                        nav id="nav" aria-label="Main" hidden {
                            a href="#/apps" { "Apps" }
                            a href="#/cluster" id="nav-cluster" { "Cluster" }
                            span id="who" class="meta" {}
                            button type="button" id="sign-out" { "Sign out" }
                        }
                    }
                    section id="sign-in" aria-labelledby="sign-in-h" hidden {
                        h1 id="sign-in-h" tabindex="-1" { "Sign in" }
                        p { "Paste an API token: the admin token " code { "paas up" } " printed, or one from "
                            code { "paas tokens create" } ". It stays in this tab only." }
                        form id="sign-in-form" class="inline" {
                            label for="token" { "API token" }
                            input id="token" name="token" type="password" autocomplete="off" required
                                aria-describedby="sign-in-error";
                            button type="submit" { "Sign in" }
                            p id="sign-in-error" class="error" role="alert" {}
                        }
                    }
                    main id="main" tabindex="-1" hidden {}
                    noscript { p { "The dashboard needs JavaScript; the " code { "paas" } " CLI does everything it does." } }
                }
            }
        }
        .into_string(),
    )
}
