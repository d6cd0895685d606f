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
    port: u16,
    store: PathBuf,
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
        let bin = binary();
        let child = Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
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
            port,
            store,
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

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let tempdir = self._tempdir.take();
        let mut again = Self::start_in(self.store.clone(), self.port)?;
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
