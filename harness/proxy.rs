//! The TCP proxy the `latency` fault acts through: the workload's and probes' connections to a
//! target pass it on 127.0.0.1, and it forwards them to the target's published port (following
//! it across restarts). While a latency is set, every chunk of data waits `delay ± jitter`
//! before it is passed on, each way, in order, like Toxiproxy's latency toxic. Otherwise it only
//! copies.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

/// What every chunk waits while the fault is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    pub delay: Duration,
    /// The delay varies uniformly within ± this.
    pub jitter: Duration,
}

/// A running proxy; dropping it stops it and every connection through it.
pub struct Proxy {
    port: u16,
    latency: Arc<Mutex<Option<Latency>>>,
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
        let latency = Arc::new(Mutex::new(None));
        let shared = latency.clone();
        let accepting = tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok((inbound, _)) = listener.accept().await {
                n += 1;
                let to = *upstream.borrow();
                let latency = shared.clone();
                tokio::spawn(async move {
                    if to == 0 {
                        return;
                    }
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", to)).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let rng = |d: u64| rand::rngs::StdRng::seed_from_u64(seed ^ (n << 1) ^ d);
                    tokio::join!(
                        pump(ri, wo, latency.clone(), rng(0)),
                        pump(ro, wi, latency, rng(1))
                    );
                });
            }
        });
        Ok(Proxy {
            port,
            latency,
            _accepting: AbortOnDropHandle::new(accepting),
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets (or, with `None`, clears) the latency added from now on.
    pub fn set(&self, latency: Option<Latency>) {
        *self.latency.lock().expect("not poisoned") = latency;
    }
}

/// Copies one direction until either side closes, holding each chunk back by the latency set
/// when it was read.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    latency: Arc<Mutex<Option<Latency>>>,
    mut rng: rand::rngs::StdRng,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = *latency.lock().expect("not poisoned");
        if let Some(l) = now {
            let jitter = l.jitter.as_micros() as i64;
            let shift = if jitter > 0 {
                rng.random_range(-jitter..=jitter)
            } else {
                0
            };
            let wait = (l.delay.as_micros() as i64 + shift).max(0) as u64;
            tokio::time::sleep(Duration::from_micros(wait)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
