//! Real TCP and UDP servers and clients inside namespaces.
//!
//! Servers answer with their name: a TCP server sends `name\n` on accept and then echoes lines;
//! a UDP server answers every datagram with its name. Both listen on `[::]` (dual-stack), so one
//! server serves both families.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// A running server; stops on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const POLL: Duration = Duration::from_millis(5);

/// Listens on `[::]:port` in `ns` and hands every connection to `handle` until dropped.
fn tcp_listen(
    ns: &Netns,
    port: u16,
    handle: impl Fn(TcpStream, SocketAddr, &Arc<AtomicBool>) + Send + 'static,
) -> anyhow::Result<Server> {
    let listener = ns.run(|| TcpListener::bind(("::", port)))??;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, peer)) => handle(stream, peer, &flag),
                Err(_) => std::thread::sleep(POLL),
            }
        }
    });
    Ok(Server {
        stop,
        thread: Some(thread),
    })
}

/// Starts a TCP server named `name` on `[::]:port` in `ns`.
pub fn tcp_server(ns: &Netns, name: &str, port: u16) -> anyhow::Result<Server> {
    let name = name.to_owned();
    tcp_listen(ns, port, move |stream, _, stop| {
        let (name, stop) = (name.clone(), stop.clone());
        std::thread::spawn(move || serve_tcp(stream, &name, &stop));
    })
}

fn serve_tcp(stream: TcpStream, name: &str, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    if writer.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if writer.write_all(line.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Starts a TCP server on `[::]:port` in `ns` that answers each connection with `name peer\n`,
/// `peer` being the client address it sees (IPv4-mapped addresses shown as IPv4): tells
/// whether a proxy kept the client's address or replaced it (SNAT).
pub fn tcp_whoami_server(ns: &Netns, name: &str, port: u16) -> anyhow::Result<Server> {
    let name = name.to_owned();
    tcp_listen(ns, port, move |mut stream, peer, _| {
        let ip = match peer.ip() {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.write_all(format!("{name} {ip}\n").as_bytes());
    })
}

/// Starts a UDP server named `name` on `[::]:port` in `ns`.
pub fn udp_server(ns: &Netns, name: &str, port: u16) -> anyhow::Result<Server> {
    let socket = ns.run(|| UdpSocket::bind(("::", port)))??;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, name) = (stop.clone(), name.to_owned());
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !flag.load(Ordering::Relaxed) {
            if let Ok((_, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(name.as_bytes(), from);
            }
        }
    });
    Ok(Server {
        stop,
        thread: Some(thread),
    })
}

/// Default time a client waits for a connection or an answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects from `ns` to `addr` and returns the name the server sent.
pub fn tcp_request(ns: &Netns, addr: SocketAddr) -> anyhow::Result<String> {
    let mut session = TcpSession::open(ns, addr)?;
    Ok(std::mem::take(&mut session.server))
}

/// An open TCP connection to a server.
pub struct TcpSession {
    reader: BufReader<TcpStream>,
    /// The name the server answered with.
    pub server: String,
}

impl TcpSession {
    pub fn open(ns: &Netns, addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = ns
            .run(|| TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        let peer = stream.peer_addr()?;
        if peer != addr {
            bail!("connected to {addr} but the socket's peer is {peer}");
        }
        let mut reader = BufReader::new(stream);
        let mut server = String::new();
        reader
            .read_line(&mut server)
            .with_context(|| format!("reading the greeting from {addr}"))?;
        if server.is_empty() {
            bail!("{addr} closed the connection without a greeting");
        }
        Ok(Self {
            reader,
            server: server.trim_end().to_owned(),
        })
    }

    /// Sends a line and checks it comes back.
    pub fn ping(&mut self) -> anyhow::Result<()> {
        self.reader.get_mut().write_all(b"ping\n")?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if line != "ping\n" {
            bail!("echo from {} returned {line:?}", self.server);
        }
        Ok(())
    }
}

/// Sends one datagram from `ns` to `addr`; returns the answer and the address it came from.
pub fn udp_request(ns: &Netns, addr: SocketAddr) -> anyhow::Result<(String, SocketAddr)> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = ns.run(|| UdpSocket::bind(bind))??;
    udp_exchange(&socket, addr)
}

/// Sends one datagram from `ns` to `addr` on a connected socket and returns the answer. A
/// connected socket is told of ICMP errors (an unconnected one is not, without `IP_RECVERR`):
/// a port unreachable answering the datagram fails the receive with ECONNREFUSED ("Connection
/// refused").
pub fn udp_connected_request(ns: &Netns, addr: SocketAddr) -> anyhow::Result<String> {
    let socket = udp_socket(ns, addr.is_ipv6())?;
    socket.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    socket
        .connect(addr)
        .with_context(|| format!("connecting to {addr}"))?;
    socket.send(b"hello")?;
    let mut buf = [0u8; 2048];
    let n = socket
        .recv(&mut buf)
        .with_context(|| format!("waiting for an answer from {addr}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Sends one datagram on an existing socket and waits for the answer.
pub fn udp_exchange(socket: &UdpSocket, addr: SocketAddr) -> anyhow::Result<(String, SocketAddr)> {
    socket.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    socket.send_to(b"hello", addr)?;
    let mut buf = [0u8; 2048];
    let (n, from) = socket
        .recv_from(&mut buf)
        .with_context(|| format!("waiting for an answer from {addr}"))?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

/// A UDP socket bound in `ns`, for several datagrams of one flow.
pub fn udp_socket(ns: &Netns, v6: bool) -> anyhow::Result<UdpSocket> {
    let bind = if v6 { "[::]:0" } else { "0.0.0.0:0" };
    Ok(ns.run(|| UdpSocket::bind(bind))??)
}
