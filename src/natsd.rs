//! A private `nats-server` with JetStream on a free loopback port, for tests, benchmarks and
//! `orrery dev`. Killed when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

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

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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
        let child = Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .args(&extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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
        server.wait_until_listening()?;
        Ok(server)
    }

    fn wait_until_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("nats-server exited at start with {status}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
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
