//! A private `nats-server` with JetStream on a free loopback port, for tests, benchmarks and
//! `orrery dev`. Killed when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The file in a server's store that its log (stderr) goes to.
pub const LOG_FILE: &str = "nats-server.log";

/// A running `nats-server` child process and its store.
pub struct NatsServer {
    child: Child,
    bin: PathBuf,
    port: u16,
    store: PathBuf,
    /// Further arguments (the cluster block of a cluster node), reused on restart.
    extra: Vec<String>,
    _tempdir: Option<tempfile::TempDir>,
}

/// The `nats-server` binary: `$ORRERY_NATS_SERVER`, the project's `.tools` copy, or `PATH`.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ORRERY_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/nats/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// Sends `child` SIGTERM, as an init system would, and waits for it to exit.
pub fn terminate(child: &mut Child) -> anyhow::Result<std::process::ExitStatus> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -TERM {} failed: {status}", child.id());
    }
    child.wait().context("waiting for the process")
}

/// A port that was free a moment ago on 127.0.0.1, below the kernel's ephemeral range, and
/// not handed out before by this process.
///
/// A port from `bind(0)` comes from the range the kernel also draws outgoing connections'
/// source ports from: between the moment a test picks it and the moment its server binds it,
/// a connection of another test running beside it can take it, and a cluster node then exits
/// at start ("address already in use"; seen in CI). Below that range a port is only ever
/// taken by an explicit bind.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    /// Where this process's next pick starts, offset by the process id so that two test
    /// processes side by side start far apart; 0 until the first pick.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let any = || Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    let ephemeral = ephemeral_start().unwrap_or(32_768);
    if ephemeral <= LOWEST + 1_000 {
        return any();
    }
    let span = ephemeral - LOWEST;
    let _ = NEXT.compare_exchange(
        0,
        std::process::id().wrapping_mul(7_919) % span + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let Ok(port) = u16::try_from(LOWEST + offset) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    any()
}

/// The first port of the kernel's ephemeral range (Linux), if it says.
fn ephemeral_start() -> Option<u32> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

impl NatsServer {
    /// Starts a server with its store in a fresh temporary directory.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary NATS store")?;
        let store = dir.path().to_path_buf();
        let mut server = Self::start_in(store, free_port()?)?;
        server._tempdir = Some(dir);
        Ok(server)
    }

    /// Starts a server on `port` keeping its JetStream store in `store` (reused on restart).
    pub fn start_in(store: PathBuf, port: u16) -> anyhow::Result<Self> {
        Self::spawn(binary(), store, port, Vec::new())
    }

    /// Starts a server reading `config` (nats-server's configuration language: users,
    /// permissions, TLS…) as well, with its store in a fresh temporary directory. The port,
    /// address and store given on the command line win over the file.
    pub fn start_with_config(config: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary NATS store")?;
        let file = dir.path().join("nats.conf");
        std::fs::write(&file, config).context("writing the nats-server configuration")?;
        let extra = vec!["-c".to_owned(), file.display().to_string()];
        let mut server = Self::spawn(binary(), dir.path().join("store"), free_port()?, extra)?;
        server._tempdir = Some(dir);
        Ok(server)
    }

    /// Starts `bin` (another nats-server version) with its store in a temporary directory.
    pub fn start_binary(bin: PathBuf) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary NATS store")?;
        let mut server = Self::spawn(bin, dir.path().to_path_buf(), free_port()?, Vec::new())?;
        server._tempdir = Some(dir);
        Ok(server)
    }

    fn spawn(bin: PathBuf, store: PathBuf, port: u16, extra: Vec<String>) -> anyhow::Result<Self> {
        // The server's log, kept in its store (a restart appends): what a failed start says.
        std::fs::create_dir_all(&store)
            .with_context(|| format!("creating the NATS store {}", store.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(store.join(LOG_FILE))
            .context("opening the nats-server log")?;
        let log_from = log.metadata().map(|m| m.len()).unwrap_or(0);
        let child = Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .args(&extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (install it with `make nats-server`, or set ORRERY_NATS_SERVER)",
                    bin.display()
                )
            })?;
        let mut server = Self {
            child,
            bin,
            port,
            store,
            extra,
            _tempdir: None,
        };
        server.wait_until_listening(log_from)?;
        Ok(server)
    }

    /// What this start of the server has logged so far: its log past `from`.
    fn log_since(&self, from: u64) -> String {
        let log = std::fs::read(self.store.join(LOG_FILE)).unwrap_or_default();
        let from = usize::try_from(from).unwrap_or(usize::MAX).min(log.len());
        String::from_utf8_lossy(&log[from..]).into_owned()
    }

    /// Waits until this start of the server says it is ready and its port answers. The log
    /// is what tells: a port can answer for another process that holds it.
    fn wait_until_listening(&mut self, log_from: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                let log = self.log_since(log_from);
                let lines: Vec<&str> = log.lines().collect();
                bail!(
                    "nats-server on port {} exited at start with {status}; its log ends:\n{}",
                    self.port,
                    lines[lines.len().saturating_sub(5)..].join("\n")
                );
            }
            if self.log_since(log_from).contains("Server is ready")
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "nats-server did not listen on port {} within 10 s",
            self.port
        )
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server (SIGKILL) and waits for it, keeping its store.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server gracefully (SIGTERM, as an init system would) and waits for it, so
    /// its store is flushed and closed as a production shutdown leaves it.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        terminate(&mut self.child)?;
        Ok(())
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let tempdir = self._tempdir.take();
        let mut again = Self::spawn(
            self.bin.clone(),
            self.store.clone(),
            self.port,
            self.extra.clone(),
        )?;
        again._tempdir = tempdir;
        std::mem::swap(self, &mut again);
        // `again` now holds the dead child; dropping it is harmless.
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 3-node JetStream cluster on loopback, as `deploy/nats/cluster.conf` describes it: free
/// ports, a store per node, routes listing every node (itself included), and a monitoring
/// port per node. Every node is killed when dropped.
pub struct Cluster {
    /// The nodes, in start order.
    pub nodes: Vec<NatsServer>,
    /// Each node's monitoring port (`/jsz`), in the same order.
    pub monitor_ports: Vec<u16>,
    _tempdir: tempfile::TempDir,
}

impl Cluster {
    /// Starts three nodes and returns once each listens for clients.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating the cluster's stores")?;
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
            .collect::<std::io::Result<_>>()?;
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster, _)| format!("nats-route://127.0.0.1:{cluster}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, cluster, monitor)) in ports.iter().enumerate() {
            let extra = vec![
                "-n".to_owned(),
                format!("n{i}"),
                "--cluster_name".to_owned(),
                "orrery".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{cluster}"),
                "--routes".to_owned(),
                routes.join(","),
                "-m".to_owned(),
                monitor.to_string(),
            ];
            let store = dir.path().join(format!("n{i}"));
            nodes.push(NatsServer::spawn(binary(), store, *port, extra)?);
        }
        Ok(Self {
            nodes,
            monitor_ports: ports.iter().map(|(_, _, m)| *m).collect(),
            _tempdir: dir,
        })
    }

    /// Every node's client URL, comma separated (as `--nats-url` takes them).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        let below = ephemeral_start().filter(|start| *start > 11_000);
        for port in ports {
            if let Some(start) = below {
                assert!(u32::from(port) < start, "{port} is in the ephemeral range");
            }
            TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
    }
}
