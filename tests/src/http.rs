//! HTTP/1.1 clients and a server inside namespaces: [`http_get`] for the tests' requests to the
//! agent's health servers, and, for the benchmarks, a tiny server for backend pods and a
//! short-connection load generator: every request is a new TCP connection (`Connection: close`),
//! to a service chosen at random per connection, with the connect latency of each recorded.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::netns::Netns;

/// How often server threads look at their stop flag while idle.
const ACCEPT_POLL_MS: i32 = 100;
/// Longest a server waits for a request, or a client for a connection or a response.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request a server reads.
const MAX_REQUEST: usize = 4096;

/// A running HTTP server; stops on drop.
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Starts an HTTP server on `[::]:port` in `ns` with `threads` accept threads. Each answers
/// every request with `200 OK` and `name` as the body, then closes the connection (as a server
/// does after a `Connection: close` request).
pub fn http_server(
    ns: &Netns,
    name: &str,
    port: u16,
    threads: usize,
) -> anyhow::Result<HttpServer> {
    let listener = ns.run(|| TcpListener::bind(("::", port)))??;
    // Non-blocking, so that a thread that lost the race for a connection goes back to poll(2).
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let body = format!("{name}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut handles = Vec::new();
    for _ in 0..threads.max(1) {
        let listener = listener.try_clone()?;
        let (flag, response) = (stop.clone(), response.clone());
        handles.push(std::thread::spawn(move || {
            serve(&listener, response.as_bytes(), &flag);
        }));
    }
    Ok(HttpServer {
        stop,
        threads: handles,
    })
}

fn serve(listener: &TcpListener, response: &[u8], stop: &AtomicBool) {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: one valid pollfd for a socket this function borrows.
        let ready = unsafe { libc::poll(&mut pfd, 1, ACCEPT_POLL_MS) };
        if ready <= 0 {
            continue;
        }
        while let Ok((stream, _)) = listener.accept() {
            answer(stream, response);
        }
    }
}

fn answer(mut stream: TcpStream, response: &[u8]) {
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(IO_TIMEOUT)).is_err()
    {
        return;
    }
    let mut request = [0_u8; MAX_REQUEST];
    let mut len = 0;
    while len < request.len() {
        match stream.read(&mut request[len..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
        if request[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            let _ = stream.write_all(response);
            return;
        }
    }
}

/// `GET path` over HTTP/1.1 from inside `ns`; returns the status code and the whole response.
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = ns.run(|| TcpStream::connect_timeout(&addr, IO_TIMEOUT))??;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line in {response:?}"))?;
    Ok((code, response))
}

/// What a [`connection_rate`] run measured.
#[derive(Clone, Debug, Default)]
pub struct RateReport {
    /// Connections that got a whole `200` response.
    pub completed: u64,
    /// Connections that failed (refused, timed out, reset, wrong answer).
    pub errors: u64,
    /// How long the run took.
    pub elapsed: Duration,
    /// Connect latency of every completed connection (SYN sent to connect() returning), in
    /// microseconds, sorted.
    pub connect_us: Vec<u32>,
}

impl RateReport {
    /// Completed connections per second.
    pub fn per_second(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p`-quantile (0..=1) of the connect latency, in microseconds.
    pub fn connect_quantile_us(&self, p: f64) -> Option<u32> {
        let last = self.connect_us.len().checked_sub(1)?;
        Some(self.connect_us[(last as f64 * p).round() as usize])
    }
}

/// The request every connection sends.
fn request(addr: SocketAddr) -> String {
    format!("GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: lb-bench\r\nConnection: close\r\n\r\n")
}

/// One short connection: connect, request, whole response, close. Returns the connect latency.
fn one_connection(addr: SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    let connected = started.elapsed();
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(request(addr).as_bytes())?;
    let mut response = Vec::with_capacity(256);
    stream.read_to_end(&mut response)?;
    anyhow::ensure!(
        response.starts_with(b"HTTP/1.1 200 "),
        "unexpected answer from {addr}: {:?}",
        String::from_utf8_lossy(&response)
    );
    // The server closed first (its FIN came with the response); closing with a reset instead of
    // a FIN spares the server a TIME_WAIT socket and a stateful proxy a TIME_WAIT conntrack
    // entry (120 s) per connection, which would otherwise fill the tables during long runs.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on our own socket with a correctly sized `struct linger`.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    Ok(connected)
}

/// xorshift64*: a fast, seedable choice of target per connection.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

/// Opens short connections from `ns` for `duration`, with `threads` connections in flight, each
/// to a target chosen at random among `targets`. Bounded by `duration` and by `max_connections`
/// per thread; every step has a timeout.
pub fn connection_rate(
    ns: &Netns,
    targets: &[SocketAddr],
    threads: usize,
    duration: Duration,
    max_connections: u64,
    seed: u64,
) -> anyhow::Result<RateReport> {
    anyhow::ensure!(!targets.is_empty(), "no targets");
    let started = Instant::now();
    let deadline = started + duration;
    let per_thread: Vec<anyhow::Result<RateReport>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|t| {
                s.spawn(move || {
                    ns.run(|| {
                        let mut rng = Rng(seed.wrapping_mul(31).wrapping_add(t as u64) | 1);
                        let mut report = RateReport::default();
                        while Instant::now() < deadline && report.completed < max_connections {
                            let addr = targets[rng.below(targets.len())];
                            match one_connection(addr) {
                                Ok(latency) => {
                                    report.completed += 1;
                                    report.connect_us.push(
                                        u32::try_from(latency.as_micros()).unwrap_or(u32::MAX),
                                    );
                                }
                                Err(_) => report.errors += 1,
                            }
                        }
                        report
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("client thread panicked"))?
            })
            .collect()
    });
    let mut total = RateReport {
        elapsed: started.elapsed(),
        ..RateReport::default()
    };
    for r in per_thread {
        let r = r.context("client thread")?;
        total.completed += r.completed;
        total.errors += r.errors;
        total.connect_us.extend(r.connect_us);
    }
    total.connect_us.sort_unstable();
    Ok(total)
}
