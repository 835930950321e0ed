//! The TCP proxy the `latency` fault acts through: the workload's and probes' connections to a
//! target pass it on 127.0.0.1, and it forwards them to the target's published port (following
//! it across restarts). While toxics are set it acts like Toxiproxy's: every chunk of data waits
//! `delay ± jitter` before it is passed on, each way, in order (latency); no connection carries
//! more than `bandwidth` bytes a second each way (bandwidth); and each connection is reset, a TCP
//! RST to both ends, once it has been open `reset` while they are set (reset_peer). Otherwise it
//! only copies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::spec::Toxics;

/// How often a connection looks whether it is due for a reset.
const RESET_POLL: Duration = Duration::from_millis(20);
/// The longest chunk a bandwidth-limited connection passes at once, in seconds of its rate, so
/// that the limit holds over short spans too.
const BANDWIDTH_SLICE: f64 = 0.05;

/// The toxics in force, and since when.
#[derive(Default)]
struct State {
    toxics: Option<(Toxics, Instant)>,
}

/// A running proxy; dropping it stops it and every connection through it.
pub struct Proxy {
    port: u16,
    state: Arc<Mutex<State>>,
    resets: Arc<AtomicU64>,
    _accepting: AbortOnDropHandle<()>,
}

impl Proxy {
    /// Listens on an ephemeral port of 127.0.0.1 and forwards each connection to the port
    /// `upstream` holds when it arrives (0: nothing serves, the connection is closed). `seed`
    /// seeds the jitter.
    pub async fn start(upstream: watch::Receiver<u16>, seed: u64) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("open the latency proxy's port")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State::default()));
        let resets = Arc::new(AtomicU64::new(0));
        let (shared, reset_count) = (state.clone(), resets.clone());
        let accepting = tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok((inbound, _)) = listener.accept().await {
                n += 1;
                let to = *upstream.borrow();
                let (state, resets) = (shared.clone(), reset_count.clone());
                tokio::spawn(async move {
                    if to == 0 {
                        return;
                    }
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", to)).await else {
                        return;
                    };
                    let rng = |d: u64| rand::rngs::StdRng::seed_from_u64(seed ^ (n << 1) ^ d);
                    if forward(inbound, outbound, &state, [rng(0), rng(1)]).await {
                        resets.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Ok(Proxy {
            port,
            state,
            resets,
            _accepting: AbortOnDropHandle::new(accepting),
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets (or, with `None`, clears) the toxics from now on.
    pub fn set(&self, toxics: Option<Toxics>) {
        self.state.lock().expect("not poisoned").toxics = toxics.map(|t| (t, Instant::now()));
    }

    /// How many connections the proxy has reset so far.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }
}

/// Copies both ways until either side closes; returns whether it reset the connection.
async fn forward(
    inbound: TcpStream,
    outbound: TcpStream,
    state: &Mutex<State>,
    [up, down]: [rand::rngs::StdRng; 2],
) -> bool {
    let opened = Instant::now();
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (mut ri, mut wi) = inbound.into_split();
    let (mut ro, mut wo) = outbound.into_split();
    let due = async {
        loop {
            tokio::time::sleep(RESET_POLL).await;
            let now = state.lock().expect("not poisoned").toxics;
            if let Some((
                Toxics {
                    reset: Some(after), ..
                },
                since,
            )) = now
                && Instant::now() >= opened.max(since) + after
            {
                return;
            }
        }
    };
    let reset = tokio::select! {
        _ = async { tokio::join!(pump(&mut ri, &mut wo, state, up), pump(&mut ro, &mut wi, state, down)) } => false,
        () = due => true,
    };
    if reset {
        // Whole again (a write half dropped alone would send FIN first), with SO_LINGER 0:
        // closing sends RST, to the client and to the service.
        for (r, w) in [(ri, wi), (ro, wo)] {
            if let Ok(stream) = r.reunite(w) {
                let _ = stream.set_zero_linger();
            }
        }
    }
    reset
}

/// Copies one direction until either side closes, holding each chunk back by the toxics in
/// force when it was read.
async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    state: &Mutex<State>,
    mut rng: rand::rngs::StdRng,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let bandwidth = state
            .lock()
            .expect("not poisoned")
            .toxics
            .and_then(|(t, _)| t.bandwidth);
        let most = bandwidth.map_or(buf.len(), |rate| {
            ((rate as f64 * BANDWIDTH_SLICE) as usize).clamp(1, buf.len())
        });
        let n = match from.read(&mut buf[..most]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = state.lock().expect("not poisoned").toxics;
        if let Some((t, _)) = now {
            let jitter = t.jitter.as_micros() as i64;
            let shift = if jitter > 0 {
                rng.random_range(-jitter..=jitter)
            } else {
                0
            };
            let mut wait = (t.delay.as_micros() as i64 + shift).max(0) as u64;
            if let Some(rate) = t.bandwidth {
                wait += n as u64 * 1_000_000 / rate.max(1);
            }
            tokio::time::sleep(Duration::from_micros(wait)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on 127.0.0.1, and a proxy in front of it.
    async fn echo_behind_proxy() -> (Proxy, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let (_tx, rx) = watch::channel(port);
        let proxy = Proxy::start(rx, 7).await.unwrap();
        std::mem::forget(_tx);
        let port = proxy.port();
        (proxy, port)
    }

    /// Sends `bytes` through a new connection and reads them back; how long it took.
    async fn echo(port: u16, bytes: usize) -> std::io::Result<Duration> {
        let started = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        let (mut r, mut w) = s.split();
        let sent = vec![7u8; bytes];
        let mut back = vec![0u8; bytes];
        tokio::try_join!(w.write_all(&sent), r.read_exact(&mut back))?;
        assert_eq!(back, sent);
        Ok(started.elapsed())
    }

    #[tokio::test]
    async fn each_toxic_acts_while_set_and_only_then() {
        let (proxy, port) = echo_behind_proxy().await;
        let plain = echo(port, 10).await.unwrap();
        assert!(plain < Duration::from_millis(100), "{plain:?}");

        // Latency: each way, so a round trip waits at least twice the delay.
        proxy.set(Some(Toxics {
            delay: Duration::from_millis(100),
            ..Toxics::default()
        }));
        let delayed = echo(port, 10).await.unwrap();
        assert!(delayed >= Duration::from_millis(200), "{delayed:?}");

        // Bandwidth: 32 KiB at 64 KiB/s takes half a second each way; the ways overlap.
        proxy.set(Some(Toxics {
            bandwidth: Some(64 * 1024),
            ..Toxics::default()
        }));
        let choked = echo(port, 32 * 1024).await.unwrap();
        assert!(choked >= Duration::from_millis(450), "{choked:?}");

        // Reset: a connection open 300 ms is reset, the client reads an RST.
        proxy.set(Some(Toxics {
            reset: Some(Duration::from_millis(300)),
            ..Toxics::default()
        }));
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the reset came");
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset)
        );
        assert_eq!(proxy.resets(), 1);

        proxy.set(None);
        let healed = echo(port, 32 * 1024).await.unwrap();
        assert!(healed < Duration::from_millis(200), "{healed:?}");
        assert_eq!(proxy.resets(), 1);
    }
}
