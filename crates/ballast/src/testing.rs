//! A private `redis-server` for tests, demos and benchmarks (feature `testing`).
//!
//! [`RedisServer::start`] runs `redis-server` from `PATH` (or `$BALLAST_REDIS_SERVER`) on a
//! unix socket in a fresh temporary folder, with no TCP port, no persistence and the
//! `noeviction` policy, waits until it answers `PING`, and kills it when dropped. Nothing is
//! shared with any other Redis on the machine.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long a fresh server may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running private `redis-server`, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    socket: PathBuf,
    extra: Vec<String>,
    // Held for its Drop: the folder with the socket and the log is removed with the server.
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server and waits until it answers.
    pub fn start() -> Result<RedisServer> {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (they override the defaults, e.g.
    /// `["--appendonly", "yes"]`) and waits until it answers.
    pub fn start_with(extra: &[&str]) -> Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("ballast-redis-")
            .tempdir()
            .map_err(|e| Error::Process(format!("temp dir: {e}")))?;
        let socket = dir.path().join("redis.sock");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn(dir.path(), &socket, &extra)?;
        let mut server = RedisServer {
            child,
            socket,
            extra,
            dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Stops the server the way an operator would (`SHUTDOWN`, which writes the AOF when it
    /// is on) and starts it again on the same socket and folder.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.child = spawn(self.dir.path(), &self.socket, &self.extra)?;
        self.wait_ready()
    }

    /// Stops the server with `SHUTDOWN` and waits until it has exited; it stays down (until
    /// [`RedisServer::restart`]).
    pub fn stop(&mut self) -> Result<()> {
        if let Ok(mut s) = UnixStream::connect(&self.socket) {
            let _ = s.write_all(b"SHUTDOWN\r\n");
        }
        self.child
            .wait()
            .map_err(|e| Error::Process(format!("redis-server did not stop: {e}")))?;
        let _ = std::fs::remove_file(&self.socket);
        Ok(())
    }

    /// The URL clients connect with.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// The folder holding the socket and the server's log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Process(format!(
                    "redis-server exited at start: {status}"
                )));
            }
            if ping(&self.socket) {
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(Error::Process(format!(
                    "redis-server did not answer within {START_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn spawn(dir: &std::path::Path, socket: &std::path::Path, extra: &[String]) -> Result<Child> {
    let program =
        std::env::var("BALLAST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string());
    Command::new(&program)
        .arg("--port")
        .arg("0")
        .arg("--unixsocket")
        .arg(socket)
        .arg("--unixsocketperm")
        .arg("700")
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
        ])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            Error::Process(format!(
                "cannot start {program}: {e} (install it: apt-get install -y redis-server)"
            ))
        })
}

fn ping(socket: &std::path::Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
