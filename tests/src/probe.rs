//! A real client process for node-originated traffic: Python's socket module, started inside a
//! test cgroup and a network namespace, reporting what the application sees (the answer, the
//! peer from `getpeername()`, the source from `recvfrom()`).

use std::{
    ffi::CString,
    fs::File,
    net::SocketAddr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cgroup::TestCgroup, netns::Netns};

/// How the probe talks to the address.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// TCP `connect()`, `getpeername()`, read the greeting line.
    Tcp,
    /// UDP `sendto()` and `recvfrom()` on an unconnected socket.
    Udp,
    /// UDP `connect()`, `getpeername()`, `send()`, `recvfrom()`.
    UdpConnected,
}

const SCRIPT: &str = r#"
import socket, sys
mode, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
def fmt(a):
    return ('[%s]:%d' if fam == socket.AF_INET6 else '%s:%d') % (a[0], a[1])
for _ in range(count):
    try:
        if mode == 'tcp':
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect((host, port))
            peer = fmt(s.getpeername())
            data = b''
            while not data.endswith(b'\n'):
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            print('answer=%s peer=%s from=-' % (data.decode().strip(), peer))
        else:
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.settimeout(2)
            peer = '-'
            if mode == 'udp-connected':
                s.connect((host, port))
                peer = fmt(s.getpeername())
                s.send(b'hello')
            else:
                s.sendto(b'hello', (host, port))
            data, frm = s.recvfrom(2048)
            print('answer=%s peer=%s from=%s' % (data.decode(), peer, fmt(frm)))
        s.close()
    except OSError as e:
        print('error=%s' % (e.strerror or e))
    sys.stdout.flush()
"#;

/// One exchange as the application saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Answer {
        /// The server's name.
        answer: String,
        /// `getpeername()`, for TCP and connected UDP.
        peer: Option<SocketAddr>,
        /// `recvfrom()`'s source, for UDP.
        from: Option<SocketAddr>,
    },
    /// The socket call's error, e.g. "Network is unreachable".
    Error(String),
}

fn parse_addr(s: &str) -> anyhow::Result<Option<SocketAddr>> {
    if s == "-" {
        return Ok(None);
    }
    Ok(Some(
        s.parse().with_context(|| format!("bad address {s:?}"))?,
    ))
}

fn parse_line(line: &str) -> anyhow::Result<Outcome> {
    if let Some(e) = line.strip_prefix("error=") {
        return Ok(Outcome::Error(e.to_owned()));
    }
    let mut answer = None;
    let mut peer = None;
    let mut from = None;
    for field in line.split_whitespace() {
        match field.split_once('=') {
            Some(("answer", v)) => answer = Some(v.to_owned()),
            Some(("peer", v)) => peer = parse_addr(v)?,
            Some(("from", v)) => from = parse_addr(v)?,
            _ => bail!("unexpected probe output {line:?}"),
        }
    }
    Ok(Outcome::Answer {
        answer: answer.context("probe output without an answer")?,
        peer,
        from,
    })
}

/// `python3 -c script args...`, to run as a process in `cgroup` (or none) and `ns`: the
/// command, ready to spawn.
pub fn python_in(
    ns: &Netns,
    cgroup: Option<&TestCgroup>,
    script: &str,
    args: &[String],
) -> anyhow::Result<Command> {
    let netns = File::open(ns.path()).with_context(|| format!("opening {:?}", ns.path()))?;
    let procs = cgroup
        .map(|c| CString::new(c.procs_file().as_os_str().as_encoded_bytes()))
        .transpose()?;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).args(args);
    // SAFETY: only async-signal-safe calls (open, write, close, setns) on data prepared before
    // the fork; `netns` moves into the closure and stays open until it runs.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Runs `count` exchanges with `addr` from a process in `cgroup` (or none) and `ns`.
pub fn probe(
    ns: &Netns,
    cgroup: Option<&TestCgroup>,
    mode: Mode,
    addr: SocketAddr,
    count: usize,
) -> anyhow::Result<Vec<Outcome>> {
    let mode = match mode {
        Mode::Tcp => "tcp",
        Mode::Udp => "udp",
        Mode::UdpConnected => "udp-connected",
    };
    let args = [
        mode.to_owned(),
        addr.ip().to_string(),
        addr.port().to_string(),
        count.to_string(),
    ];
    let out = python_in(ns, cgroup, SCRIPT, &args)?
        .output()
        .context("running the python3 probe")?;
    if !out.status.success() {
        bail!(
            "probe failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let outcomes = String::from_utf8(out.stdout)?
        .lines()
        .map(parse_line)
        .collect::<anyhow::Result<Vec<_>>>()?;
    if outcomes.len() != count {
        bail!(
            "probe printed {} results for {count} exchanges",
            outcomes.len()
        );
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_probe_lines() {
        assert_eq!(
            parse_line("answer=b1 peer=[fd00::1]:80 from=-").unwrap(),
            Outcome::Answer {
                answer: "b1".into(),
                peer: Some("[fd00::1]:80".parse().unwrap()),
                from: None
            }
        );
        assert_eq!(
            parse_line("error=Network is unreachable").unwrap(),
            Outcome::Error("Network is unreachable".into())
        );
    }
}
