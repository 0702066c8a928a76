//! Carrying a communicator's unique id (NCCL's 128 bytes) from rank 0 to the other ranks, over the
//! launcher's MASTER_ADDR:MASTER_PORT (rank 0 listens, the others connect and retry) or through a file in a
//! folder every rank sees. Every wait has a deadline and ends in an error that says what was waited for.

use crate::error::{Result, TrainError};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

fn err(m: String) -> TrainError {
    TrainError::Config(m)
}

/// Rank 0: serves `id` to `world - 1` ranks connecting to `bind` (e.g. "0.0.0.0:29500").
pub fn serve_tcp(bind: &str, id: &[u8], world: usize, timeout: Duration) -> Result<()> {
    let l = TcpListener::bind(bind).map_err(|e| err(format!("rendezvous: cannot listen on {bind}: {e}")))?;
    l.set_nonblocking(true).map_err(|e| err(format!("rendezvous: {e}")))?;
    let deadline = Instant::now() + timeout;
    let mut served = 0;
    while served + 1 < world {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).ok();
                s.set_write_timeout(Some(timeout)).ok();
                let len = (id.len() as u32).to_le_bytes();
                s.write_all(&len).and_then(|_| s.write_all(id)).map_err(|e| err(format!("rendezvous: sending the id: {e}")))?;
                served += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(err(format!("rendezvous: {served} of {} ranks connected to {bind} within {:.0} s", world - 1, timeout.as_secs_f64())));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(err(format!("rendezvous: accepting on {bind}: {e}"))),
        }
    }
    Ok(())
}

/// Ranks 1..: fetches the id from rank 0 at `addr`, retrying until `timeout`.
pub fn fetch_tcp(addr: &str, timeout: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        let target = addr.to_socket_addrs().ok().and_then(|mut a| a.next());
        if let Some(sa) = target {
            match TcpStream::connect_timeout(&sa, Duration::from_secs(2)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(timeout)).ok();
                    let mut len = [0u8; 4];
                    s.read_exact(&mut len).map_err(|e| err(format!("rendezvous: reading from {addr}: {e}")))?;
                    let n = u32::from_le_bytes(len) as usize;
                    if n > 1 << 16 {
                        return Err(err(format!("rendezvous: {addr} sent a {n}-byte id")));
                    }
                    let mut id = vec![0u8; n];
                    s.read_exact(&mut id).map_err(|e| err(format!("rendezvous: reading from {addr}: {e}")))?;
                    return Ok(id);
                }
                Err(e) => last = e.to_string(),
            }
        } else {
            last = format!("cannot resolve {addr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(err(format!("rendezvous: no id from rank 0 at {addr} within {:.0} s ({last})", timeout.as_secs_f64())))
}

/// Rank 0: writes the id to `file` (atomically: the others never read half an id).
pub fn publish_file(file: &Path, id: &[u8]) -> Result<()> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, id).and_then(|_| std::fs::rename(&tmp, file)).map_err(|e| err(format!("rendezvous: writing {}: {e}", file.display())))
}

/// Ranks 1..: waits for `file` and reads the id.
pub fn read_file(file: &Path, timeout: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(b) = std::fs::read(file) {
            return Ok(b);
        }
        if Instant::now() > deadline {
            return Err(err(format!("rendezvous: {} did not appear within {:.0} s (is rank 0 running, and the folder shared?)", file.display(), timeout.as_secs_f64())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_travel_over_tcp_and_files_and_waits_end() {
        let id: Vec<u8> = (0..128).map(|i| i as u8).collect();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let got = std::thread::scope(|s| {
            let server = s.spawn(|| serve_tcp(&addr, &id, 3, Duration::from_secs(10)));
            let a = s.spawn(|| fetch_tcp(&addr, Duration::from_secs(10)));
            let b = s.spawn(|| fetch_tcp(&addr, Duration::from_secs(10)));
            server.join().unwrap().unwrap();
            [a.join().unwrap().unwrap(), b.join().unwrap().unwrap()]
        });
        assert!(got.iter().all(|g| g == &id));
        let e = fetch_tcp("127.0.0.1:1", Duration::from_millis(300)).unwrap_err().to_string();
        assert!(e.contains("no id from rank 0"), "{e}");
        let dir = std::env::temp_dir().join(format!("unetr-rdv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("nccl.id");
        publish_file(&f, &id).unwrap();
        assert_eq!(read_file(&f, Duration::from_secs(1)).unwrap(), id);
        assert!(read_file(&dir.join("absent"), Duration::from_millis(100)).unwrap_err().to_string().contains("did not appear"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
