//! `paas`: the command-line client and the platform daemons in one binary.
//!
//! Client commands talk to the controller API (see `client.rs`, `config.rs`);
//! `paas up` runs the single-node platform (see `up.rs`).

mod attach;
mod backups;
mod client;
mod cluster;
mod commands;
mod config;
mod logs;
mod mysql;
mod pg;
mod redis;
mod routes;
mod runtime;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// paas: a small self-hosted platform for apps, databases and logs.
#[derive(Parser)]
#[command(name = "paas", version, about)]
struct Cli {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the single-node platform (etcd, controller) until interrupted.
    Up(paas_node::up::UpArgs),
    /// Run one member of a managed appliance (started by `paas up`).
    #[command(subcommand, hide = true)]
    Appliance(ApplianceCmd),
    /// Run one job under the host agent's shim (started by the agent; kills the job's
    /// process group when the agent dies).
    #[command(name = "job-shim", hide = true)]
    JobShim {
        /// AGENT_PID -- PROGRAM [ARGS...]
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Run a host agent (and a standby scheduler) that joins an existing cluster.
    Host(paas_node::host::HostArgs),
    /// Create, list, inspect and destroy apps.
    #[command(subcommand)]
    Apps(AppsCmd),
    /// Read and change an app's environment (each change makes a release).
    #[command(subcommand)]
    Env(EnvCmd),
    /// List an app's releases, newest first.
    Releases {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
    },
    /// Make a new release from an earlier one (default: the previous release).
    Rollback {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        /// Release version to return to, e.g. 3 or v3.
        version: Option<String>,
    },
    /// Manage API tokens (admin only).
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Attach managed resources (databases) to apps.
    #[command(subcommand)]
    Resource(ResourceCmd),
    /// Backups of an app's resources (databases): create, list, download, restore,
    /// delete, schedule.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// HTTP routes: domains (and path prefixes) served by an app's web jobs. Every app
    /// is also served at <app>.<domain> (`paas up --domain`).
    #[command(subcommand)]
    Route(RouteCmd),
    /// Show the API's status as seen with the current token.
    Status,
    /// Create releases with process types and code.
    #[command(subcommand)]
    Release(ReleaseCmd),
    /// Set how many jobs of each process type run (TYPE=COUNT...), and their limits
    /// (TYPE alone changes only the limits).
    Scale {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        #[arg(required = true)]
        counts: Vec<String>,
        /// Memory limit of each job of the named types (512M, 1G; `none` to lift it).
        #[arg(long)]
        memory: Option<String>,
        /// CPU limit of each job of the named types, in CPUs (0.5, 2, 250m; `none` to lift it).
        #[arg(long)]
        cpu: Option<String>,
    },
    /// List an app's jobs.
    Ps {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
    },
    /// Show an app's logs (the last lines, then new ones with --follow).
    Log {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        /// How many past lines.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
        /// Keep streaming new lines.
        #[arg(short, long)]
        follow: bool,
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// Only this process type.
        #[arg(long = "type")]
        process_type: Option<String>,
        /// Only stdout or stderr.
        #[arg(long)]
        stream: Option<String>,
    },
    /// The platform's own state (admin).
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Postgres resources of an app.
    #[command(subcommand)]
    Pg(PgCmd),
    /// Redis resources of an app.
    #[command(subcommand)]
    Redis(RedisCmd),
    /// MariaDB resources of an app.
    #[command(subcommand)]
    Mysql(MysqlCmd),
    /// Manage log drains (Elasticsearch, S3, syslog, forward).
    #[command(subcommand)]
    Drain(DrainCmd),
    /// Run a one-off command in the app's environment, attached to this terminal; exits
    /// with the command's exit code.
    Run {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        /// Extra environment: KEY=VALUE (repeatable).
        #[arg(short, long = "env")]
        env: Vec<String>,
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Stop a job; the scheduler starts a replacement if the formation wants one.
    Kill {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        job: String,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Hosts, the scheduler's leader, the log aggregator and every appliance's roles.
    Status,
    /// The whole cluster in one file (admin token): an etcd snapshot, the releases'
    /// code and a fresh backup of every resource, with a manifest of SHA-256 digests.
    Backup {
        /// Where to write it (`-`: stdout).
        file: PathBuf,
    },
    /// Lay out a `paas cluster backup` file in an empty data dir; `paas up --data-dir
    /// DIR` then starts with the same apps, releases, tokens and routes and restores
    /// the resources' data. A damaged file is refused before anything is written.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The new data dir (absent or empty).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Print a join token for `paas host --join-token-file` (run on the `paas up`
    /// machine; it reads the data dir's pki and cluster secret, and whoever holds the
    /// token is a member of the cluster: hand it over like a password).
    JoinToken {
        /// The `paas up` data dir (default: PAAS_DATA_DIR or ~/.paas).
        #[arg(long, env = "PAAS_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// etcd client URLs the host should use (default: the embedded etcd's).
        #[arg(long)]
        etcd: Option<String>,
        /// The log aggregator's syslog address for the host's shippers.
        #[arg(long)]
        log_addr: Option<std::net::SocketAddr>,
    },
}

#[derive(Subcommand)]
enum PgCmd {
    /// The Postgres cluster: generation, primary, sync, WAL position and lag per member.
    Info,
    /// Restart a cluster whose state in etcd was lost (members with data refuse to
    /// bootstrap over it) from the member with the highest WAL position.
    Recover {
        /// Restart from this member instead (when a member's WAL position is unknown).
        #[arg(long)]
        member: Option<String>,
    },
    /// Restore the app's database as it was at a moment (from the cluster's continuous
    /// archive) into a NEW database attached to the app (or to --into-app) as
    /// <RESOURCE>_URL; the app's DATABASE_URL is left alone.
    Restore {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        /// The moment: 'YYYY-MM-DD HH:MM:SS' in UTC, or with an offset ('+01:00', 'Z').
        #[arg(long)]
        to_time: String,
        /// Attach the restored database to this app instead.
        #[arg(long)]
        into_app: Option<String>,
        /// The app's Postgres resource to restore (default: its only one).
        #[arg(long)]
        resource: Option<String>,
    },
    /// Open psql on the app's database (its DATABASE_URL).
    Psql {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        /// Extra psql arguments (after `--`), e.g. `-- -c 'select 1'`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum RedisCmd {
    /// Each Redis resource's group: generation, roles, offsets, lag, last decisions.
    Info {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
    },
    /// Restart a resource's group whose state in etcd was lost (members with data
    /// refuse to bootstrap over it) from the member with the most data.
    Recover {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        /// The Redis resource (needed when the app has several).
        #[arg(long)]
        resource: Option<String>,
        /// Restart from this member instead (e.g. r1).
        #[arg(long)]
        member: Option<String>,
    },
    /// Open redis-cli on the app's Redis (its REDIS_URL).
    Cli {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        /// Extra redis-cli arguments (after `--`), e.g. `-- PING`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ApplianceCmd {
    /// A PostgreSQL supervisor.
    Postgres(paas_postgres::args::SupervisorArgs),
    /// A Redis supervisor (one member of a resource's replication group).
    Redis(paas_redis::args::SupervisorArgs),
    /// A MariaDB supervisor.
    Mysql(paas_mysql::args::SupervisorArgs),
}

#[derive(Subcommand)]
enum MysqlCmd {
    /// The MariaDB cluster: generation, primary, sync, GTID positions, lag and each
    /// member's last decision.
    Info,
    /// Restart a cluster whose state in etcd was lost (members with data refuse to
    /// bootstrap over it) from the member whose GTID position holds the most
    /// transactions.
    Recover {
        /// Restart from this member instead.
        #[arg(long)]
        member: Option<String>,
    },
    /// Open the mariadb client on the app's database (its MYSQL_URL).
    Shell {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        /// Extra mariadb client arguments (after `--`), e.g. `-- -e 'select 1'`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DrainCmd {
    /// Ship logs (of one app, or of every app) to a sink.
    Add {
        #[arg(short, long)]
        app: Option<String>,
        /// elasticsearch, s3, syslog or forward.
        kind: String,
        /// https://es:9200, s3://bucket/prefix, syslog+tls://host:port, forward://host:port
        url: String,
        /// Elasticsearch index pattern (strftime), e.g. 'logs-%Y.%m.%d'.
        #[arg(long)]
        index: Option<String>,
        /// S3 endpoint of an S3-compatible server.
        #[arg(long)]
        endpoint: Option<String>,
        /// S3 region.
        #[arg(long)]
        region: Option<String>,
        /// PEM file with the CA roots for syslog+tls.
        #[arg(long)]
        ca_file: Option<String>,
        /// Send a batch after this many milliseconds even if it is not full
        /// (defaults per sink: S3 30 s, others about a second).
        #[arg(long)]
        flush_ms: Option<u64>,
    },
    /// List drains with delivered, failed, dropped, lag and last error.
    List {
        #[arg(short, long)]
        app: Option<String>,
    },
    /// Remove a drain.
    Remove { id: String },
}

#[derive(Subcommand)]
enum ReleaseCmd {
    /// Make a release from a Procfile and code (a directory or a .tar.gz).
    Add {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        /// Procfile with `type: command` lines.
        #[arg(long, default_value = "Procfile")]
        procfile: PathBuf,
        /// Directory or gzip'd tarball with the app's code.
        code: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AppsCmd {
    /// Create an app.
    Create { name: String },
    /// List apps.
    List,
    /// Show an app: current release, variables, resources.
    Info { name: String },
    /// Destroy an app, its releases and resources.
    Destroy {
        name: String,
        /// Repeat the app name to confirm.
        #[arg(long)]
        confirm: String,
    },
}

#[derive(Subcommand)]
enum EnvCmd {
    /// Set variables: KEY=VALUE...
    Set {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Show all variables, or one.
    Get {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        key: Option<String>,
    },
    /// Remove variables.
    Unset {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Create a token; with -a it can only see and change that app.
    Create {
        #[arg(short, long)]
        app: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (secrets are never shown again).
    List,
    /// Revoke a token by id; it stops working at once.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum ResourceCmd {
    /// Provision a resource of KIND (e.g. postgres, redis) and set its variables on the app.
    Add {
        kind: String,
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        /// Members of the resource's own replication group (redis: 1 primary + replicas;
        /// default 2).
        #[arg(long)]
        members: Option<usize>,
    },
    /// List an app's resources.
    List {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
    },
    /// Remove a resource: its data is destroyed and its variables unset.
    Remove {
        id: String,
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
    },
}

#[derive(Subcommand)]
enum BackupCmd {
    /// Back up RESOURCE (default: the app's only resource with backups) now.
    Create {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        /// The resource id (see `paas resource list`).
        resource: Option<String>,
    },
    /// List the app's complete backups, newest first.
    List {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
    },
    /// Show one backup's manifest.
    Show {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        id: String,
    },
    /// Write a backup's dump (the engine's own format) to stdout, checked.
    Download {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        id: String,
    },
    /// Restore a backup into its resource (or another app's, with --into-app); the
    /// dump is checked whole first, and a damaged one changes nothing.
    Restore {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        id: String,
        /// Restore into this app's resource of the same kind.
        #[arg(long)]
        into_app: Option<String>,
        /// The target resource id (default: the backup's own, or the other app's only
        /// one of that kind).
        #[arg(long)]
        resource: Option<String>,
    },
    /// Delete a backup.
    Delete {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        id: String,
    },
    /// Show the app's backup schedule, or set it with --cron (UTC, five fields).
    Schedule {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        /// When, e.g. '0 3 * * *' (03:00 UTC daily).
        #[arg(long)]
        cron: Option<String>,
        /// Only this resource (default: every resource of the app with backups).
        #[arg(long, requires = "cron")]
        resource: Option<String>,
        /// Keep the newest N scheduled backups...
        #[arg(long, requires = "cron")]
        keep_last: Option<u32>,
        /// ...and every scheduled backup younger than N days.
        #[arg(long, requires = "cron")]
        keep_days: Option<u32>,
    },
    /// Remove the app's backup schedule (its backups stay).
    Unschedule {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
    },
}

#[derive(Subcommand)]
enum RouteCmd {
    /// Route DOMAIN (optionally only paths under --path) to the app's web jobs, or with
    /// --tcp PORT every connection to that port of every router.
    Add {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        /// The domain, e.g. shop.example.com.
        #[arg(required_unless_present = "tcp", conflicts_with = "tcp")]
        domain: Option<String>,
        /// A TCP route on this port (3000-3999) of every router.
        #[arg(long, conflicts_with_all = ["path", "sticky", "cert", "key"])]
        tcp: Option<u16>,
        /// Only requests under this path prefix, e.g. /api.
        #[arg(long)]
        path: Option<String>,
        /// Keep each client on one backend (signed cookie).
        #[arg(long)]
        sticky: bool,
        /// PEM certificate chain served for DOMAIN over HTTPS.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// PEM private key of --cert.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
    /// List the app's routes (the default <app>.<domain> is not listed).
    List {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
    },
    /// Remove a route.
    Remove {
        #[arg(short, long, env = "PAAS_APP")]
        app: String,
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::JobShim { args } = cli.command {
        // No async runtime: the shim is one thread that waits on signals.
        return ExitCode::from(paas_host::shim::main(args).clamp(0, 255) as u8);
    }
    if let Command::Run { app, env, command } = &cli.command {
        // The job's exit code is ours: no "paas:" wrapping on success paths.
        return run_attached(app, env, command);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("paas: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paas: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `paas run`: exits with the job's exit code (or 1 with a message if it never ran).
fn run_attached(app: &str, env: &[String], command: &[String]) -> ExitCode {
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async {
                let env = commands::parse_pairs(env)?;
                attach::run(app, command, env).await
            })
        });
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("paas: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    use commands as c;
    let json = cli.json;
    match cli.command {
        Command::Up(args) => {
            paas_node::up::run(args, |url, token| {
                config::save(&config::ClientConfig {
                    url: url.to_string(),
                    token: token.to_string(),
                })
            })
            .await
        }
        Command::Host(args) => paas_node::host::run(args).await,
        Command::JobShim { .. } => anyhow::bail!("job-shim runs before the async runtime"),
        Command::Appliance(ApplianceCmd::Postgres(args)) => {
            paas_node::postgres::supervise(args).await
        }
        Command::Appliance(ApplianceCmd::Redis(args)) => paas_node::redis::supervise(args).await,
        Command::Redis(RedisCmd::Cli { app, args }) => redis::cli(&app, &args).await,
        Command::Redis(RedisCmd::Info { app }) => redis::info(json, &app).await,
        Command::Redis(RedisCmd::Recover {
            app,
            resource,
            member,
        }) => redis::recover(json, &app, resource.as_deref(), member.as_deref()).await,
        Command::Appliance(ApplianceCmd::Mysql(args)) => paas_node::mysql::supervise(args).await,
        Command::Mysql(MysqlCmd::Shell { app, args }) => mysql::shell(&app, &args).await,
        Command::Mysql(MysqlCmd::Info) => c::provider_status(json, "mysql").await,
        Command::Mysql(MysqlCmd::Recover { member }) => c::recover(json, "mysql", member).await,
        Command::Pg(PgCmd::Psql { app, args }) => pg::psql(&app, &args).await,
        Command::Pg(PgCmd::Restore {
            app,
            to_time,
            into_app,
            resource,
        }) => {
            pg::restore(
                json,
                &app,
                &to_time,
                into_app.as_deref(),
                resource.as_deref(),
            )
            .await
        }
        Command::Pg(PgCmd::Info) => c::provider_status(json, "postgres").await,
        Command::Pg(PgCmd::Recover { member }) => c::recover(json, "postgres", member).await,
        Command::Cluster(ClusterCmd::Status) => c::cluster_status(json).await,
        Command::Cluster(ClusterCmd::Backup { file }) => cluster::backup(json, &file).await,
        Command::Cluster(ClusterCmd::Restore { file, data_dir }) => {
            cluster::restore(json, &file, &data_dir)
        }
        Command::Cluster(ClusterCmd::JoinToken {
            data_dir,
            etcd,
            log_addr,
        }) => {
            let data_dir = match data_dir {
                Some(d) => d,
                None => paas_node::up::default_data_dir()?,
            };
            let token = paas_node::join::make(&data_dir, etcd.as_deref(), log_addr)?;
            println!("{}", paas_node::join::encode(&token));
            Ok(())
        }
        Command::Apps(AppsCmd::Create { name }) => c::apps_create(json, &name).await,
        Command::Apps(AppsCmd::List) => c::apps_list(json).await,
        Command::Apps(AppsCmd::Info { name }) => c::apps_info(json, &name).await,
        Command::Apps(AppsCmd::Destroy { name, confirm }) => {
            c::apps_destroy(json, &name, &confirm).await
        }
        Command::Env(EnvCmd::Set { app, pairs }) => c::env_set(json, &app, &pairs).await,
        Command::Env(EnvCmd::Get { app, key }) => c::env_get(json, &app, key.as_deref()).await,
        Command::Env(EnvCmd::Unset { app, keys }) => c::env_unset(json, &app, &keys).await,
        Command::Releases { app } => c::releases(json, &app).await,
        Command::Rollback { app, version } => c::rollback(json, &app, version.as_deref()).await,
        Command::Tokens(TokensCmd::Create { app, description }) => {
            c::tokens_create(json, app.as_deref(), &description).await
        }
        Command::Tokens(TokensCmd::List) => c::tokens_list(json).await,
        Command::Tokens(TokensCmd::Revoke { id }) => c::tokens_revoke(json, &id).await,
        Command::Resource(ResourceCmd::Add { kind, app, members }) => {
            c::resource_add(json, &app, &kind, members).await
        }
        Command::Resource(ResourceCmd::List { app }) => c::resource_list(json, &app).await,
        Command::Resource(ResourceCmd::Remove { id, app }) => {
            c::resource_remove(json, &app, &id).await
        }
        Command::Route(RouteCmd::Add {
            app,
            domain,
            tcp,
            path,
            sticky,
            cert,
            key,
        }) => {
            let args = routes::AddArgs {
                app: &app,
                domain: domain.as_deref().unwrap_or(""),
                tcp,
                path: path.as_deref(),
                sticky,
                cert: cert.as_deref(),
                key: key.as_deref(),
            };
            routes::add(json, args).await
        }
        Command::Backup(cmd) => backup(json, cmd).await,
        Command::Route(RouteCmd::List { app }) => routes::list(json, &app).await,
        Command::Route(RouteCmd::Remove { app, id }) => routes::remove(json, &app, &id).await,
        Command::Status => c::status(json).await,
        Command::Release(ReleaseCmd::Add {
            app,
            procfile,
            code,
        }) => runtime::release_add(json, &app, &procfile, code.as_deref()).await,
        Command::Scale {
            app,
            counts,
            memory,
            cpu,
        } => runtime::scale(json, &app, &counts, memory.as_deref(), cpu.as_deref()).await,
        Command::Ps { app } => runtime::ps(json, &app).await,
        Command::Kill { app, job } => runtime::kill(json, &app, &job).await,
        Command::Run { .. } => unreachable!("handled before the runtime starts"),
        Command::Log {
            app,
            lines,
            follow,
            job,
            process_type,
            stream,
        } => {
            let args = logs::LogArgs {
                app: &app,
                lines,
                follow,
                job: job.as_deref(),
                process_type: process_type.as_deref(),
                stream: stream.as_deref(),
            };
            logs::log(json, args).await
        }
        Command::Drain(DrainCmd::Add {
            app,
            kind,
            url,
            index,
            endpoint,
            region,
            ca_file,
            flush_ms,
        }) => {
            let args = logs::DrainArgs {
                app: app.as_deref(),
                kind: &kind,
                url: &url,
                index: index.as_deref(),
                endpoint: endpoint.as_deref(),
                region: region.as_deref(),
                ca_file: ca_file.as_deref(),
                flush_ms,
            };
            logs::drain_add(json, args).await
        }
        Command::Drain(DrainCmd::List { app }) => logs::drain_list(json, app.as_deref()).await,
        Command::Drain(DrainCmd::Remove { id }) => logs::drain_remove(json, &id).await,
    }
}

async fn backup(json: bool, cmd: BackupCmd) -> anyhow::Result<()> {
    match cmd {
        BackupCmd::Create { app, resource } => {
            backups::create(json, &app, resource.as_deref()).await
        }
        BackupCmd::List { app } => backups::list(json, &app).await,
        BackupCmd::Show { app, id } => backups::show(&app, &id).await,
        BackupCmd::Download { app, id } => backups::download(&app, &id).await,
        BackupCmd::Restore {
            app,
            id,
            into_app,
            resource,
        } => backups::restore(json, &app, &id, into_app.as_deref(), resource.as_deref()).await,
        BackupCmd::Delete { app, id } => backups::delete(&app, &id).await,
        BackupCmd::Schedule {
            app,
            cron,
            resource,
            keep_last,
            keep_days,
        } => {
            let args = backups::ScheduleArgs {
                app: &app,
                cron: cron.as_deref(),
                resource: resource.as_deref(),
                keep_last,
                keep_days,
            };
            backups::schedule(json, args).await
        }
        BackupCmd::Unschedule { app } => backups::unschedule(&app).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_shim_subcommand_is_the_one_the_agent_runs() {
        let cli = Cli::try_parse_from([
            "paas",
            paas_host::shim::SUBCOMMAND,
            "42",
            "--",
            "sh",
            "-c",
            "echo -n hi",
        ])
        .unwrap();
        let Command::JobShim { args } = cli.command else {
            panic!("not the shim subcommand");
        };
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(args.first(), Some(&"42"));
        assert_eq!(&args[args.len() - 3..], ["sh", "-c", "echo -n hi"]);
    }
}
