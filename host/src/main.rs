//! The `weir` command: parse the command line, call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// mimalloc: the request path allocates a few dozen small objects per
/// request (heads, header values, futures), and glibc's malloc was 17% of
/// the gateway's instructions in a profile of the empty chain. Built
/// without transparent huge pages (`no_thp`): with them its arena's RSS
/// grew by 2 MiB at a time (228 MiB against 118 MiB with 1000 plugins).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A WebAssembly plugin-host API gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a configuration (reloaded live when it or a module changes).
    Run {
        /// Path to gateway.toml, or etcd://HOST:PORT[,HOST:PORT]/PREFIX for
        /// a configuration kept in etcd (fleet mode).
        #[arg(short, long, default_value = "gateway.toml")]
        config: String,
        /// This node's proxy address, over `[server] listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// This node's admin address, over `[server] admin_listen`.
        #[arg(long)]
        admin_listen: Option<std::net::SocketAddr>,
        /// This node's plugins folder, over `[server] plugins_dir`.
        #[arg(long)]
        plugins_dir: Option<PathBuf>,
        /// This node's name in the fleet's member list (default:
        /// HOSTNAME:PORT).
        #[arg(long)]
        node_id: Option<String>,
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Runtime worker threads (default: one per CPU).
        #[arg(long)]
        workers: Option<usize>,
        /// With `--workers N`: N single-threaded event loops, each with its
        /// own listener (SO_REUSEPORT), as nginx's worker processes,
        /// instead of one work-stealing runtime of N threads.
        #[arg(long, requires = "workers")]
        reuse_port: bool,
        /// Refuse to start when the config fails to load, instead of
        /// starting from the last good one (for CI and first deploys).
        #[arg(long)]
        strict: bool,
        /// Where the last good config and modules are kept (over `[server]
        /// state_dir`).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Load and validate a configuration and every plugin it names, then exit.
    Check {
        /// Path to gateway.toml.
        #[arg(short, long, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Plugin authoring.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Register a service instance in etcd for gateways whose upstream has
    /// `discovery = { etcd = PREFIX }`, on a lease kept alive until this
    /// exits (SIGTERM or Ctrl-C deregisters at once).
    Register {
        /// etcd://HOST:PORT[,HOST:PORT]/PREFIX, e.g. etcd://10.0.0.5:2379/services/orders
        location: String,
        /// The instance's address, HOST:PORT.
        #[arg(long)]
        addr: String,
        /// Its share of requests relative to the others (1 to 1000).
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Where it runs (informational).
        #[arg(long)]
        zone: Option<String>,
        /// Its key under the prefix (default: the address).
        #[arg(long)]
        id: Option<String>,
        /// The lease's time to live, seconds: how long after this process
        /// dies the instance stays registered.
        #[arg(long, default_value_t = 10)]
        ttl: i64,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// The configuration file's format.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the JSON Schema of gateway.toml (for editors: taplo, Even
    /// Better TOML).
    Schema,
    /// Check a configuration as `weir check` does, then store it in etcd
    /// for a fleet: one transaction, refused if the stored configuration
    /// changed since this file was pulled.
    Push {
        /// The gateway.toml to push.
        file: PathBuf,
        /// etcd://HOST:PORT[,HOST:PORT]/PREFIX
        location: String,
        /// Overwrite whatever is stored, without checking its revision.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Write the configuration stored in etcd to a file (or stdout), with
    /// the revision it was read at as its last line, for `weir config push`.
    Pull {
        /// etcd://HOST:PORT[,HOST:PORT]/PREFIX
        location: String,
        /// The file to write (default: stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

/// How to reach etcd (with an etcd:// location).
#[derive(clap::Args, Default)]
struct EtcdArgs {
    /// etcd user name.
    #[arg(long)]
    etcd_username: Option<String>,
    /// The environment variable holding the etcd password.
    #[arg(long, requires = "etcd_username")]
    etcd_password_env: Option<String>,
    /// CA certificate (PEM): speak TLS to etcd, verified against it.
    #[arg(long)]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd, with --etcd-key.
    #[arg(long, requires_all = ["etcd_key", "etcd_ca"])]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    fn access(self) -> weir::fleet::Access {
        weir::fleet::Access {
            username: self.etcd_username,
            password_env: self.etcd_password_env,
            ca: self.etcd_ca,
            cert: self.etcd_cert,
            key: self.etcd_key,
        }
    }
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Write a new plugin crate (tests, README, build alias, config
    /// snippet) from a template.
    New {
        /// The crate's name, also the plugin's in the snippet.
        name: String,
        /// What the plugin starts as.
        #[arg(long, value_enum, default_value = "headers")]
        template: weir::scaffold::Template,
        /// Where the crate's folder is made.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Depend on the SDK at this path (a weir checkout's plugin-sdk/)
        /// instead of the registry's weir-plugin-sdk.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Print the JSON Schema a plugin module declares for its `config`.
    Schema {
        /// The plugin's .wasm file.
        module: PathBuf,
    },
    /// Publish a module to an OCI registry (a CNCF Wasm artifact; its config
    /// schema, if it declares one, as an annotation) and print the digests
    /// to pin.
    Push {
        /// The plugin's .wasm file.
        module: PathBuf,
        /// Where: oci://HOST[:PORT]/REPO:TAG.
        reference: String,
        /// Plain HTTP (a registry on loopback).
        #[arg(long)]
        insecure: bool,
        /// User name for the registry.
        #[arg(long)]
        username: Option<String>,
        /// The environment variable holding the password.
        #[arg(long, requires = "username")]
        password_env: Option<String>,
        /// A README to attach (as the description annotation).
        #[arg(long)]
        readme: Option<PathBuf>,
    },
    /// Run a plugin on a flight recording, offline: the recorded phase,
    /// once, in a local engine with the plugin's limits. Exits 0 when the
    /// plugin continues or answers below 500, 3 when it traps, overruns its
    /// deadline, gives output the gateway refuses or answers 5xx, 1 when
    /// nothing could be replayed.
    Replay {
        /// The recording (`GET /admin/recordings/ID`, or a file of the
        /// recorder's folder).
        recording: PathBuf,
        /// The module to run (default: the one --config names).
        #[arg(long)]
        module: Option<PathBuf>,
        /// A gateway.toml giving the plugin's config, limits and module.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The [plugins.NAME] to take from --config (default: the recorded
        /// plugin).
        #[arg(long)]
        plugin: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    // One worker: a single-threaded event loop (like an nginx worker), which
    // skips the work-stealing machinery. Otherwise a multi-threaded runtime.
    let mut builder = match &cli.command {
        // The workers have event loops of their own; this one keeps the
        // admin API and the control plane (reloads, health checks).
        Command::Run { workers: Some(1), .. } | Command::Run { reuse_port: true, .. } => {
            tokio::runtime::Builder::new_current_thread()
        }
        Command::Run { workers: Some(n), .. } => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads((*n).max(1));
            b
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run {
                config,
                strict,
                state_dir,
                workers,
                reuse_port,
                listen,
                admin_listen,
                plugins_dir,
                node_id,
                etcd,
            } => {
                let workers = match (reuse_port, workers) {
                    (true, Some(n)) => weir::Workers::ReusePort(n.max(1)),
                    _ => weir::Workers::Shared,
                };
                // Paths given here are the node's own: relative to where it
                // was started.
                let plugins_dir = plugins_dir.map(|d| std::path::absolute(&d).unwrap_or(d));
                let node = weir::NodeLocal { listen, admin_listen, plugins_dir, node_id };
                let options = weir::StartOptions { strict, state_dir, node };
                run(config, options, etcd.access(), workers).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Check { config } => check(config).await.map(|()| ExitCode::SUCCESS),
            Command::Register { location, addr, weight, zone, id, ttl, etcd } => {
                if !(1..=1000).contains(&weight) || ttl < 1 {
                    anyhow::bail!("--weight must be 1 to 1000 and --ttl at least 1");
                }
                let id = id.unwrap_or_else(|| addr.clone());
                let instance = weir::fleet::registry::Instance { addr, weight, zone };
                weir::fleet::registry::register(&location, &etcd.access(), &id, &instance, ttl, shutdown_signal())
                    .await
                    .map_err(anyhow::Error::msg)?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Plugin(PluginCommand::New { name, template, dir, sdk }) => {
                let made = weir::scaffold::new_plugin(&name, template, &dir, sdk.as_deref())?;
                print!("{}", weir::scaffold::next_steps(&made, &dir.join(&name)));
                Ok(ExitCode::SUCCESS)
            }
            Command::Plugin(PluginCommand::Schema { module }) => {
                plugin_schema(module).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Plugin(PluginCommand::Push { module, reference, insecure, username, password_env, readme }) => {
                plugin_push(module, reference, insecure, username, password_env, readme)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
            Command::Plugin(PluginCommand::Replay { recording, module, config, plugin }) => {
                let done = weir::replay::replay(&weir::replay::Replay { recording, module, config, plugin }).await?;
                print!("{}", done.report);
                if done.verdict == weir::replay::Verdict::Failed {
                    return Ok(ExitCode::from(3));
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Config(ConfigCommand::Schema) => {
                println!("{:#}", weir_config::schema());
                Ok(ExitCode::SUCCESS)
            }
            Command::Config(ConfigCommand::Push { file, location, force, etcd }) => {
                let revision = weir::fleet::push(&file, &location, &etcd.access(), force).await?;
                println!("pushed {} to {location}: revision {revision}", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Command::Config(ConfigCommand::Pull { location, output, etcd }) => {
                let text = weir::fleet::pull(&location, &etcd.access()).await.map_err(anyhow::Error::msg)?;
                match output {
                    Some(file) => {
                        std::fs::write(&file, text)
                            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
                    }
                    None => print!("{text}"),
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    config: String,
    options: weir::StartOptions,
    etcd: weir::fleet::Access,
    workers: weir::Workers,
) -> anyhow::Result<()> {
    let gateway = if config.starts_with(weir::fleet::SCHEME) {
        weir::Gateway::start_etcd(&config, etcd, options).await?
    } else {
        weir::Gateway::start(&config, options).await?
    };
    let bound = gateway.bind_with(workers).await?;
    bound.serve(shutdown_signal()).await
}

async fn check(config: PathBuf) -> anyhow::Result<()> {
    let gateway = weir::Gateway::load(&config).await?;
    let summary = gateway.summary();
    println!(
        "{}: ok ({} routes, {} upstreams, {} plugins)",
        config.display(),
        summary.routes,
        summary.upstreams,
        summary.plugins.len()
    );
    for (name, module, sha256) in &summary.plugins {
        println!("  plugin {name:<16} {module} sha256:{sha256}");
    }
    Ok(())
}

async fn plugin_schema(module: PathBuf) -> anyhow::Result<()> {
    let bytes = std::fs::read(&module).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", module.display()))?;
    let plugin = weir_plugin_host::LocalPlugin::compile(bytes, &weir_config::RuntimeConfig::default())
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", module.display()))?;
    match plugin.config_schema().await.map_err(|e| anyhow::anyhow!("{}: {e}", module.display()))? {
        Some(text) => {
            // Pretty-printed when it is JSON (the gateway refuses it otherwise).
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) => println!("{v:#}"),
                Err(_) => println!("{text}"),
            }
            Ok(())
        }
        None => {
            anyhow::bail!("{} declares no config schema (it predates contract 0.2.5 or returns none)", module.display())
        }
    }
}

async fn plugin_push(
    module: PathBuf,
    reference: String,
    insecure: bool,
    username: Option<String>,
    password_env: Option<String>,
    readme: Option<PathBuf>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let reference = weir_oci::Reference::parse(&reference)?;
    let bytes = std::fs::read(&module).with_context(|| format!("cannot read {}", module.display()))?;
    // Compiled here first: only a module this gateway can load is pushed.
    let local = weir_plugin_host::LocalPlugin::compile(bytes.clone(), &weir_config::RuntimeConfig::default())
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", module.display()))?;
    let mut annotations = std::collections::BTreeMap::new();
    if let Some(name) = module.file_name() {
        annotations.insert("org.opencontainers.image.title".to_owned(), name.to_string_lossy().into_owned());
    }
    if let Some(schema) = local.config_schema().await.map_err(|e| anyhow::anyhow!("{}: {e}", module.display()))? {
        annotations.insert("dev.weir.plugin.config-schema".to_owned(), schema);
    }
    if let Some(readme) = readme {
        let text = std::fs::read_to_string(&readme).with_context(|| format!("cannot read {}", readme.display()))?;
        annotations.insert("org.opencontainers.image.description".to_owned(), text);
    }
    let credentials = match (username, password_env) {
        (Some(username), Some(var)) => {
            let password = std::env::var(&var).with_context(|| format!("the environment variable {var} is not set"))?;
            Some(weir_oci::Credentials { username, password })
        }
        (Some(username), None) => Some(weir_oci::Credentials { username, password: String::new() }),
        _ => None,
    };
    let client = weir_oci::Client::new(weir_oci::ClientOptions { insecure, credentials, ..Default::default() });
    let manifest = client.push(&reference, &bytes, annotations).await?;
    let layer = weir_plugin_host::sha256_hex(&bytes);
    println!("pushed {reference}");
    println!("  manifest {manifest}");
    println!("  module   sha256:{layer}");
    println!("pin it in gateway.toml:");
    println!("  module = \"oci://{}/{}@{manifest}\"", reference.registry(), reference.repository());
    println!("  sha256 = \"{layer}\"");
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested");
}
