//! A throwaway redis-server: a child process on a free port on 127.0.0.1
//! (and a Unix socket in its temp dir), without persistence, with its own
//! temp dir for the log; killed and cleaned up on drop.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    create_temp_dir, file_len, find_on_path, free_port, log_tail, read_from, status_text,
    LocalError, START_ATTEMPTS,
};

/// How long a started redis-server gets to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running throwaway redis-server (no persistence) owned by this handle.
/// Dropping it kills the server and removes its temp dir, also during a
/// panic unwind.
#[derive(Debug)]
pub struct LocalRedis {
    /// The temp dir (redis' working dir, holds the log).
    dir: PathBuf,
    /// `<dir>/redis.log` (appended to on every start).
    log: PathBuf,
    /// The redis-server executable.
    program: PathBuf,
    /// The TCP port on 127.0.0.1.
    port: u16,
    /// The server process; `None` while stopped.
    child: Option<Child>,
}

impl LocalRedis {
    /// Checks, without starting anything, that `redis-server` is on PATH.
    pub fn check_installed() -> Result<(), LocalError> {
        find_on_path("redis-server")
            .map(|_| ())
            .ok_or(LocalError::RedisNotInstalled)
    }

    /// Starts a redis-server on a free port (retrying with another port when
    /// the chosen one gets taken) and waits until it answers PING.
    pub fn start() -> Result<Self, LocalError> {
        Self::start_on_ports(&mut free_port)
    }

    /// [`start`](Self::start), taking the ports to try from `next_port`
    /// (tests hand it a taken port first).
    fn start_on_ports(
        next_port: &mut dyn FnMut() -> Result<u16, LocalError>,
    ) -> Result<Self, LocalError> {
        let program = find_on_path("redis-server").ok_or(LocalError::RedisNotInstalled)?;
        let dir = create_temp_dir("walcast-redis", false)?;
        // From here on, Drop cleans up whatever exists.
        let mut redis = LocalRedis {
            log: dir.join("redis.log"),
            dir,
            program,
            port: 0,
            child: None,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            redis.port = next_port()?;
            match redis.launch() {
                Ok(()) => return Ok(redis),
                Err((true, _)) if attempt < START_ATTEMPTS => continue,
                Err((_, e)) => return Err(e),
            }
        }
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's temp dir (its working dir, holding the log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's process id while it runs (for tests that pause it with
    /// SIGSTOP to simulate an unreachable Redis without losing its data).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The server's Unix socket, `<dir>/redis.sock` (owner only).
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// The server's URL: `redis://127.0.0.1:{port}/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it, keeping the port, to
    /// simulate an outage. All data is lost (there is no persistence).
    /// Does nothing when it is already stopped.
    pub fn stop(&mut self) -> Result<(), LocalError> {
        if let Some(mut child) = self.child.take() {
            let killed = child.kill();
            let waited = child.wait();
            killed.map_err(|e| LocalError::io("could not kill redis-server", e))?;
            waited.map_err(|e| LocalError::io("could not wait for redis-server", e))?;
        }
        Ok(())
    }

    /// Starts a new, empty server on the same port after
    /// [`stop`](Self::stop) (stopping the current one first if it still
    /// runs). Fails if the port was taken meanwhile.
    pub fn restart(&mut self) -> Result<(), LocalError> {
        self.stop()?;
        self.launch().map_err(|(_, e)| e)
    }

    /// Spawns redis-server on `self.port` and waits until it answers. On
    /// failure also says whether the log shows that the port was taken
    /// (worth retrying on another port).
    fn launch(&mut self) -> Result<(), (bool, LocalError)> {
        let log_offset = file_len(&self.log);
        let open_log = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .map_err(|e| {
                    (
                        false,
                        LocalError::io(format!("could not open {}", self.log.display()), e),
                    )
                })
        };
        let (stdout, stderr) = (open_log()?, open_log()?);
        let mut child = Command::new(&self.program)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--unixsocket")
            .arg(self.socket_path())
            .args(["--unixsocketperm", "700"])
            .args(["--daemonize", "no", "--logfile"])
            .arg(&self.log)
            .current_dir(&self.dir)
            // Its own process group: a Ctrl-C in the terminal (SIGINT to the
            // foreground group) must not stop Redis under a walcast that is
            // still finishing its last transaction; the handle stops it.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                (
                    false,
                    LocalError::io(format!("could not run {}", self.program.display()), e),
                )
            })?;

        let deadline = Instant::now() + READY_TIMEOUT;
        let reason = loop {
            match child.try_wait() {
                Ok(Some(status)) => break format!("redis-server {}", status_text(&status)),
                Ok(None) => {}
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err((false, LocalError::io("could not check on redis-server", e)));
                }
            }
            // Checking the pid makes sure we are not talking to some other
            // redis that holds the port while ours fails to bind.
            if ping(self.port, Some(child.id())).unwrap_or(false) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break format!("no +PONG within {} s", READY_TIMEOUT.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let port_taken = read_from(&self.log, log_offset).contains("Address already in use");
        Err((
            port_taken,
            LocalError::StartFailed {
                server: "redis-server",
                dir: self.dir.clone(),
                reason: format!("{reason} on port {}", self.port),
                log: self.log.clone(),
                tail: log_tail(&self.log),
            },
        ))
    }
}

impl Drop for LocalRedis {
    /// Kills the server, waits for it and removes the temp dir. Never panics.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Sends a raw `PING` to 127.0.0.1:`port` and says whether `+PONG` came
/// back; with `pid`, also checks (`INFO server`) that the answering server is
/// that process.
fn ping(port: u16, pid: Option<u32>) -> io::Result<bool> {
    let timeout = Duration::from_secs(1);
    let stream = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut writer = &stream;
    let mut reader = BufReader::new(&stream);
    writer.write_all(b"PING\r\n")?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.starts_with("+PONG") {
        return Ok(false);
    }
    let Some(pid) = pid else {
        return Ok(true);
    };
    writer.write_all(b"INFO server\r\n")?;
    line.clear();
    reader.read_line(&mut line)?;
    let Some(len) = line
        .trim_end()
        .strip_prefix('$')
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return Ok(false);
    };
    let mut info = vec![0; len];
    reader.read_exact(&mut info)?;
    let wanted = format!("process_id:{pid}");
    Ok(String::from_utf8_lossy(&info)
        .lines()
        .any(|l| l.trim_end() == wanted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Sends one inline command and returns the first reply line.
    fn send(port: u16, command: &str) -> io::Result<String> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        (&stream).write_all(format!("{command}\r\n").as_bytes())?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    }

    #[test]
    fn start_ping_stop_restart() {
        let mut redis = LocalRedis::start().unwrap();
        let port = redis.port();
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/"));
        assert_eq!(send(port, "PING").unwrap(), "+PONG");
        assert_eq!(send(port, "SET k v").unwrap(), "+OK");
        assert_eq!(send(port, "GET k").unwrap(), "$1");

        redis.stop().unwrap();
        assert!(send(port, "PING").is_err());
        redis.stop().unwrap(); // stopping twice is fine

        redis.restart().unwrap();
        assert_eq!(redis.port(), port);
        assert_eq!(send(port, "PING").unwrap(), "+PONG");
        assert_eq!(send(port, "GET k").unwrap(), "$-1", "data is gone");
        // restart() on a running server replaces it.
        redis.restart().unwrap();
        assert_eq!(send(port, "PING").unwrap(), "+PONG");
    }

    #[test]
    fn two_servers_in_parallel() {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(|| {
                    let redis = LocalRedis::start().unwrap();
                    assert_eq!(send(redis.port(), "PING").unwrap(), "+PONG");
                    redis.port()
                })
            })
            .collect();
        let ports: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_ne!(ports[0], ports[1]);
    }

    #[test]
    fn drop_kills_and_removes_dir() {
        let redis = LocalRedis::start().unwrap();
        let (dir, port) = (redis.dir.clone(), redis.port());
        assert!(dir.join("redis.log").exists());
        drop(redis);
        assert!(!dir.exists(), "{} still exists", dir.display());
        assert!(send(port, "PING").is_err());
    }

    #[test]
    fn panic_still_cleans_up() {
        let mut seen = None;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let redis = LocalRedis::start().unwrap();
            seen = Some((redis.dir.clone(), redis.port()));
            panic!("test panic with a running redis");
        }));
        assert!(result.is_err());
        let (dir, port) = seen.unwrap();
        assert!(!dir.exists(), "{} still exists", dir.display());
        assert!(send(port, "PING").is_err());
    }

    #[test]
    fn retries_when_port_is_taken() {
        let taken = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let mut ports = vec![taken_port];
        let mut next = || match ports.pop() {
            Some(port) => Ok(port),
            None => free_port(),
        };
        let redis = LocalRedis::start_on_ports(&mut next).unwrap();
        assert_ne!(redis.port(), taken_port);
        assert_eq!(send(redis.port(), "PING").unwrap(), "+PONG");
        let log = fs::read_to_string(&redis.log).unwrap();
        assert!(log.contains("Address already in use"), "{log}");
    }

    #[test]
    fn restart_fails_with_log_tail_when_port_taken() {
        let mut redis = LocalRedis::start().unwrap();
        redis.stop().unwrap();
        let _taken = TcpListener::bind(("127.0.0.1", redis.port())).unwrap();
        let msg = redis.restart().unwrap_err().to_string();
        assert!(msg.starts_with("could not start redis-server in "), "{msg}");
        assert!(msg.contains("Address already in use"), "{msg}");
    }
}
