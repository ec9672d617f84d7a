//! Pieces every page uses: the error slot next to a control, the panel shown for a
//! refused page, and time formatting.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::client::Refusal;

/// A fragment with a status: htmx swaps 2xx and 4xx/5xx alike (see the shell's
/// `htmx-config`), so a failed action re-renders its section with the error in place.
pub fn fragment(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

/// The error slot placed right after the control it is about (`aria-describedby`
/// points here); empty when there is nothing to say.
pub fn error_slot(id: &str, error: Option<&str>) -> Markup {
    html! {
        p.error id=(id) role="alert" { @if let Some(e) = error { (e) } }
    }
}

/// A whole page the API refused: 404 for apps the token may not see, 403 for admin
/// pages, 401 (handled by the glue script: back to sign-in).
pub fn refusal_page(r: &Refusal) -> Markup {
    let title = match r.status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::UNAUTHORIZED => "Sign in again",
        _ => "Something went wrong",
    };
    html! {
        h1 tabindex="-1" { (title) }
        p.error role="alert" { (r.message) }
        p { a href="#/apps" { "Back to apps" } }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        fragment(self.status, refusal_page(&self))
    }
}

/// `2026-12-01 10:11:12 UTC`
pub fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `5s`, `3m`, `2h`, `4d`: how long ago `t` was, coarsely.
pub fn ago(t: &DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - *t).num_seconds().max(0);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_coarse() {
        let now = Utc::now();
        let check = |secs: i64, want: &str| {
            assert_eq!(ago(&(now - chrono::Duration::seconds(secs)), now), want);
        };
        check(0, "0s");
        check(59, "59s");
        check(60, "1m");
        check(3600, "1h");
        check(86_400 * 3, "3d");
        check(-5, "0s");
    }

    #[test]
    fn refusals_are_escaped() {
        let r = Refusal {
            status: StatusCode::NOT_FOUND,
            message: "app \"<b>x</b>\" not found".into(),
        };
        let page = refusal_page(&r).into_string();
        assert!(page.contains("&lt;b&gt;x&lt;/b&gt;"), "{page}");
        assert!(page.contains("Not found"), "{page}");
    }
}
