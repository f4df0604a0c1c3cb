//! NATS request/reply through a local `nats-server`: what one hop costs
//! wasmCloud.

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Result};

use crate::harness::{dies_with_bench, Baseline};

/// A minimal NATS client (the text protocol): what wasmCloud pays per hop.
struct Nats {
    stream: std::net::TcpStream,
    reader: BufReader<std::net::TcpStream>,
}

impl Nats {
    fn connect(port: u16) -> Result<Self> {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        // A responder or server that stops answering fails the baseline
        // instead of hanging the bench.
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut info = String::new();
        reader.read_line(&mut info)?;
        let mut nats = Self { stream, reader };
        nats.stream
            .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")?;
        nats.expect("PONG")?;
        Ok(nats)
    }

    fn expect(&mut self, what: &str) -> Result<String> {
        let mut line = String::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            if line.starts_with("PING") {
                self.stream.write_all(b"PONG\r\n")?;
                continue;
            }
            if line.starts_with(what) {
                return Ok(line.trim_end().to_string());
            }
            if line.is_empty() {
                bail!("NATS closed the connection");
            }
        }
    }

    /// Reads one MSG and its payload: (subject, reply-to, payload).
    fn next_msg(&mut self) -> Result<(String, Option<String>, Vec<u8>)> {
        let head = self.expect("MSG")?;
        let parts: Vec<&str> = head.split_whitespace().collect();
        let (subject, reply, len) = match parts.as_slice() {
            [_, subject, _sid, len] => (subject.to_string(), None, len.parse::<usize>()?),
            [_, subject, _sid, reply, len] => {
                (subject.to_string(), Some(reply.to_string()), len.parse()?)
            }
            _ => bail!("bad MSG line {head}"),
        };
        let mut payload = vec![0; len + 2];
        self.reader.read_exact(&mut payload)?;
        payload.truncate(len);
        Ok((subject, reply, payload))
    }
}

/// Request/reply through a local nats-server: a requester, and a responder
/// on its own thread that echoes. The server is killed and reaped on drop;
/// the responder's thread then sees the connection close and ends.
pub(crate) struct NatsEcho {
    // Dropped after the requester: the server outlives its connections.
    requester: Nats,
    _server: Baseline,
}

impl NatsEcho {
    pub(crate) fn start() -> Result<Self> {
        // The server picks its own port (-p -1) and writes it to a ports
        // file: a port picked here and handed over could be taken between.
        let ports_dir = std::env::temp_dir().join(format!("bench-nats-{}", std::process::id()));
        std::fs::create_dir_all(&ports_dir)?;
        // Stopped when dropped, on every error path below too.
        let mut server = Baseline(
            dies_with_bench(
                Command::new("nats-server")
                    .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
                    .arg(&ports_dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
            .spawn()
            .map_err(|_| anyhow!("nats-server is not installed (apt-get install nats-server)"))?,
        );
        let port = Self::listening_port(&mut server.0, &ports_dir);
        let _ = std::fs::remove_dir_all(&ports_dir);
        let port = port?;
        let mut echo = Self {
            requester: Self::connect(port)?,
            _server: server,
        };
        let mut responder = Self::connect(port)?;
        responder
            .stream
            .write_all(b"SUB bench.echo 1\r\nPING\r\n")?;
        responder.expect("PONG")?;
        std::thread::spawn(move || -> Result<()> {
            loop {
                let (_, reply, payload) = responder.next_msg()?;
                if let Some(reply) = reply {
                    let mut msg = format!("PUB {reply} {}\r\n", payload.len()).into_bytes();
                    msg.extend_from_slice(&payload);
                    msg.extend_from_slice(b"\r\n");
                    responder.stream.write_all(&msg)?;
                }
            }
        });
        echo.requester
            .stream
            .write_all(b"SUB _INBOX.bench 1\r\nPING\r\n")?;
        echo.requester.expect("PONG")?;
        for _ in 0..50 {
            echo.round_trip()?;
        }
        Ok(echo)
    }

    /// The client port from the server's ports file, once it is written.
    fn listening_port(server: &mut std::process::Child, ports_dir: &Path) -> Result<u16> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Some(status) = server.try_wait()? {
                bail!("nats-server exited ({status}) before it listened");
            }
            // {"nats":["nats://127.0.0.1:44103"]}; a half-written file is
            // read again on the next round.
            let port = std::fs::read_dir(ports_dir)?
                .filter_map(|entry| std::fs::read(entry.ok()?.path()).ok())
                .find_map(|text| {
                    let ports: serde_json::Value = serde_json::from_slice(&text).ok()?;
                    let url = ports["nats"].get(0)?.as_str()?;
                    url.rsplit_once(':')?.1.parse::<u16>().ok()
                });
            if let Some(port) = port {
                return Ok(port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("nats-server did not write its port within 5 s")
    }

    /// Connects, retrying while the server starts.
    fn connect(port: u16) -> Result<Nats> {
        let started = Instant::now();
        loop {
            match Nats::connect(port) {
                Ok(c) => return Ok(c),
                Err(_) if started.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One request answered; blocks the calling thread.
    pub(crate) fn round_trip(&mut self) -> Result<Duration> {
        self.round_trips(1)
    }

    /// `n` requests, each sent when the last was answered: the time for all.
    pub(crate) fn round_trips(&mut self, n: u32) -> Result<Duration> {
        let payload = [7u8; 16];
        let mut msg = format!("PUB bench.echo _INBOX.bench {}\r\n", payload.len()).into_bytes();
        msg.extend_from_slice(&payload);
        msg.extend_from_slice(b"\r\n");
        let t = Instant::now();
        for _ in 0..n {
            self.requester.stream.write_all(&msg)?;
            self.requester.next_msg()?;
        }
        Ok(t.elapsed())
    }
}
