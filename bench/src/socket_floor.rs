//! The hot user's lowest floor: what this machine's kernel costs to carry one
//! small frame to N sockets, with no runtime, no WebSocket library and no
//! client library on either side.
//!
//! A child process holds the server ends of N loopback TCP connections in
//! one `mio` poll loop. A byte `?` on any of them asks how many others it
//! holds; a byte `g` makes it write one ready-made WebSocket text frame
//! (the product's `status`) to every other with one `write(2)` each, from
//! one thread, then answer with how many it wrote to and how long the
//! writing took. The load generator holds the
//! client ends in one `mio` poll loop on one thread and notes when each
//! first reads the bytes. Nothing a server can do costs less per watcher
//! than this, so a goal below it is a goal for another machine, not for
//! the product (`BENCHMARKS.md`, hot user).

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

/// The frame every watcher gets: a WebSocket text frame (server to client,
/// unmasked) holding the `status` the product sends for the hot user.
fn status_frame() -> Vec<u8> {
    let p = presence_model::Presence::counted(presence_model::UserId::parse("hot-user").expect("valid"), 1, 1);
    let json = presence_model::wire::ServerMessage::status(&p, presence_model::time::now_ms()).to_json();
    let mut frame = vec![0x81];
    match json.len() {
        n @ 0..=125 => frame.push(n as u8),
        n => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(json.as_bytes());
    frame
}

/// The child: the server ends, one poll loop, one thread.
pub fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let std_listener = presence_http::bind(addr)?.into_std()?;
    let mut listener = TcpListener::from_std(std_listener);
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut sockets: Vec<Option<TcpStream>> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let frame = status_frame();
    let mut buf = [0u8; 64];
    loop {
        poll.poll(&mut events, None)?;
        for event in &events {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nodelay(true);
                            poll.registry().register(&mut s, Token(sockets.len()), Interest::READABLE)?;
                            sockets.push(Some(s));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                continue;
            }
            let i = event.token().0;
            let (mut go, mut asked) = (false, false);
            let mut gone = false;
            if let Some(s) = sockets.get_mut(i).and_then(Option::as_mut) {
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => {
                            gone = true;
                            break;
                        }
                        Ok(n) => {
                            go |= buf[..n].contains(&b'g');
                            asked |= buf[..n].contains(&b'?');
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {
                            gone = true;
                            break;
                        }
                    }
                }
            }
            if gone {
                sockets[i] = None;
                continue;
            }
            if asked {
                // How many sockets a broadcast would reach now.
                let others = sockets.iter().flatten().count().saturating_sub(1) as u32;
                if let Some(s) = sockets[i].as_mut() {
                    let _ = s.write(&others.to_be_bytes());
                }
            }
            if go {
                let started = Instant::now();
                let mut wrote = 0u32;
                for (j, s) in sockets.iter_mut().enumerate() {
                    if let Some(s) = s.as_mut().filter(|_| j != i) {
                        // An idle socket's send buffer is empty: the frame fits whole.
                        if s.write(&frame).is_ok_and(|n| n == frame.len()) {
                            wrote += 1;
                        }
                    }
                }
                let took_us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
                let mut tally = wrote.to_be_bytes().to_vec();
                tally.extend_from_slice(&took_us.to_be_bytes());
                if let Some(s) = sockets[i].as_mut() {
                    let _ = s.write(&tally);
                }
            }
        }
    }
}

/// Connects `watchers` sockets and a control to the child, then times two
/// broadcasts from the control's `g` to each watcher's first bytes.
fn measure(addr: SocketAddr, watchers: usize) -> anyhow::Result<()> {
    let mut control = std::net::TcpStream::connect(addr)?;
    control.set_nodelay(true)?;
    control.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let s = std::net::TcpStream::connect(addr).with_context(|| format!("watcher socket {i}"))?;
        s.set_nonblocking(true)?;
        let mut s = TcpStream::from_std(s);
        poll.registry().register(&mut s, Token(i), Interest::READABLE)?;
        conns.push(s);
    }
    // Wait until the child holds every socket.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        control.write_all(b"?")?;
        let mut held = [0u8; 4];
        control.read_exact(&mut held).context("the child's count")?;
        if u32::from_be_bytes(held) as usize >= watchers {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the child accepted {} of {watchers}", u32::from_be_bytes(held));
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "floor: the kernel alone, one thread writing the frame to {watchers} sockets with write(2), one epoll reader"
    );
    let mut events = Events::with_capacity(4096);
    let mut buf = [0u8; 4096];
    for round in ["first broadcast", "second broadcast"] {
        let mut at: Vec<Option<Duration>> = vec![None; watchers];
        let mut heard = 0usize;
        let t0 = Instant::now();
        control.write_all(b"g")?;
        while heard < watchers && t0.elapsed() < Duration::from_secs(10) {
            poll.poll(&mut events, Some(Duration::from_millis(100)))?;
            for event in &events {
                let i = event.token().0;
                loop {
                    match conns[i].read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {
                            if at[i].is_none() {
                                at[i] = Some(t0.elapsed());
                                heard += 1;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        let mut tally = [0u8; 8];
        control.read_exact(&mut tally).context("the child's tally")?;
        let wrote = u32::from_be_bytes([tally[0], tally[1], tally[2], tally[3]]);
        let writing_ms = f64::from(u32::from_be_bytes([tally[4], tally[5], tally[6], tally[7]])) / 1000.0;
        let mut lat: Vec<Duration> = at.into_iter().flatten().collect();
        lat.sort();
        anyhow::ensure!(!lat.is_empty(), "no socket heard the broadcast");
        println!(
            "  {round:<38} {} of {watchers} sockets ({wrote} written in {writing_ms:.1} ms); {}",
            lat.len(),
            crate::hot_user::spread(&lat)
        );
    }
    Ok(())
}

/// Runs the floor against a child of this program.
pub async fn run(watchers: usize) -> anyhow::Result<()> {
    let (_server, addr) = crate::child("serve-raw-broadcast").await?;
    tokio::task::spawn_blocking(move || measure(addr, watchers)).await?
}
