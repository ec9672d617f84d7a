//! Latency of the controller API: `apps create` and `env set`, sequential over one
//! keep-alive connection. Run by `scripts/bench` against a fresh `paas up`:
//!
//!     cargo run --release -p paas --example api_bench -- URL TOKEN [N]

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().context("usage: api_bench URL TOKEN [N]")?;
    let token = args.next().context("usage: api_bench URL TOKEN [N]")?;
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(300);
    let http = reqwest::Client::new();
    let run = std::process::id();

    let mut create = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let resp = http
            .post(format!("{url}/apps"))
            .bearer_auth(&token)
            .json(&json!({ "name": format!("bench-{run}-{i}") }))
            .send()
            .await?;
        ensure!(
            resp.status().as_u16() == 201,
            "apps create: {}",
            resp.text().await?
        );
        create.push(t.elapsed());
    }

    let app = format!("bench-{run}-0");
    let mut env_set = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let resp = http
            .patch(format!("{url}/apps/{app}/env"))
            .bearer_auth(&token)
            .json(&json!({ "set": { "COUNTER": i.to_string() } }))
            .send()
            .await?;
        ensure!(
            resp.status().as_u16() == 201,
            "env set: {}",
            resp.text().await?
        );
        env_set.push(t.elapsed());
    }

    report("apps create", &mut create);
    report("env set", &mut env_set);

    for i in 0..n {
        http.delete(format!("{url}/apps/bench-{run}-{i}"))
            .bearer_auth(&token)
            .send()
            .await?;
    }
    Ok(())
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let pct = |p: f64| {
        let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i].as_secs_f64() * 1000.0
    };
    println!(
        "{what:<12} n={:<5} p50={:>7.2} ms  p99={:>7.2} ms  max={:>7.2} ms",
        samples.len(),
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
}
