//! UDP ports for receiver workers. RIST's simple profile puts RTP on an even
//! port P and RTCP on P+1, so every link gets an even port and its odd
//! neighbour is reserved with it. Allocation walks the range round-robin, so
//! a port just released (where a finished stream's sender may still be
//! sending) is the last to be handed out again, and it checks with the OS
//! that both ports can really be bound.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Mutex;

/// No free pair of ports left.
#[derive(Debug, thiserror::Error)]
#[error("no {0} free RIST port pairs left in {1}-{2}")]
pub struct Exhausted(usize, u16, u16);

struct State {
    used: BTreeSet<u16>,
    next: u16,
}

/// The relay's pool of RIST ports.
pub struct PortPool {
    first: u16,
    last: u16,
    bind: IpAddr,
    state: Mutex<State>,
}

impl PortPool {
    /// A pool over `first..=last` (rounded in to whole even/odd pairs),
    /// checked for bindability on `bind`.
    pub fn new(first: u16, last: u16, bind: IpAddr) -> PortPool {
        let first = first + first % 2;
        let last = if last.is_multiple_of(2) {
            last.saturating_sub(1)
        } else {
            last
        };
        PortPool {
            first,
            last,
            bind,
            state: Mutex::new(State {
                used: BTreeSet::new(),
                next: first,
            }),
        }
    }

    fn bindable(&self, port: u16) -> bool {
        UdpSocket::bind(SocketAddr::new(self.bind, port)).is_ok()
            && UdpSocket::bind(SocketAddr::new(self.bind, port + 1)).is_ok()
    }

    /// `n` even ports (each with its odd neighbour reserved).
    pub fn alloc(&self, n: usize) -> Result<Vec<u16>, Exhausted> {
        let mut st = self.state.lock().expect("port pool");
        let pairs = usize::from((self.last - self.first).div_ceil(2));
        let mut out = Vec::with_capacity(n);
        let mut p = st.next;
        for _ in 0..pairs {
            if out.len() == n {
                break;
            }
            if !st.used.contains(&p) && !out.contains(&p) && self.bindable(p) {
                out.push(p);
            }
            p = if p + 2 > self.last { self.first } else { p + 2 };
        }
        if out.len() < n {
            return Err(Exhausted(n, self.first, self.last));
        }
        st.next = p;
        for &p in &out {
            st.used.insert(p);
            st.used.insert(p + 1);
        }
        Ok(out)
    }

    /// Gives ports back.
    pub fn release(&self, ports: &[u16]) {
        let mut st = self.state.lock().expect("port pool");
        for &p in ports {
            st.used.remove(&p);
            st.used.remove(&(p + 1));
        }
    }

    /// Marks ports of a re-adopted worker as taken.
    pub fn claim(&self, ports: &[u16]) {
        let mut st = self.state.lock().expect("port pool");
        for &p in ports {
            st.used.insert(p);
            st.used.insert(p + 1);
        }
    }

    /// Ports (both halves of each pair) currently out.
    pub fn in_use(&self) -> usize {
        self.state.lock().expect("port pool").used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn pool(first: u16, last: u16) -> PortPool {
        PortPool::new(first, last, "127.0.0.1".parse().unwrap())
    }

    #[test]
    fn even_ports_with_their_neighbours_and_no_collisions_over_500_cycles() {
        let pool = pool(41_001, 41_100); // rounds in to 41002..=41099
        let mut rng = rand::rng();
        let mut live: Vec<Vec<u16>> = Vec::new();
        for cycle in 0..500 {
            if live.len() < 8 && (live.is_empty() || rng.random_bool(0.6)) {
                let n = rng.random_range(1..=4);
                let ports = pool.alloc(n).unwrap();
                assert_eq!(ports.len(), n);
                for &p in &ports {
                    assert_eq!(p % 2, 0, "RTP port even");
                    assert!((41_002..=41_098).contains(&p));
                    for other in live.iter().flatten() {
                        assert!(
                            p != *other && p + 1 != *other && p != other + 1,
                            "cycle {cycle}: {p} collides with {other}"
                        );
                    }
                }
                live.push(ports);
            } else {
                let i = rng.random_range(0..live.len());
                pool.release(&live.swap_remove(i));
            }
            assert_eq!(
                pool.in_use(),
                live.iter().map(|p| p.len() * 2).sum::<usize>()
            );
        }
    }

    #[test]
    fn released_ports_come_back_last_and_exhaustion_is_an_error() {
        let pool = pool(41_200, 41_209); // pairs 41200, 41202, ..., 41208
        let a = pool.alloc(2).unwrap();
        assert_eq!(a, vec![41_200, 41_202]);
        pool.release(&a);
        assert_eq!(pool.alloc(1).unwrap(), vec![41_204], "round robin");
        assert!(pool.alloc(5).is_err(), "only four pairs are free");
        assert_eq!(pool.alloc(4).unwrap().len(), 4);
    }

    #[test]
    fn ports_taken_by_someone_else_are_skipped() {
        let busy = UdpSocket::bind("127.0.0.1:41301").unwrap(); // odd half of 41300
        let pool = pool(41_300, 41_305);
        assert_eq!(pool.alloc(1).unwrap(), vec![41_302]);
        drop(busy);
    }
}
