//! Who gets a place on the health endpoint when it is full.
//!
//! A refused connection cannot be a policy here: a slow-loris client that
//! reconnects whenever it is cut would keep every place and the kubelet's
//! probe would be refused (issue 16: 64 such connections took 100% of the
//! probes down). So a new connection is always admitted, and when the
//! endpoint is full the connection that goes is an old one still waiting
//! for its request head, as haproxy and Envoy shed load under overload:
//! - from the new connection's own source when that source is at its share
//!   (one address cannot push out another's connections);
//! - otherwise from the source holding the most places.
//!
//! A connection that has its request head is being answered, which takes
//! microseconds, and is never evicted. A probe sends its head at once, so
//! it leaves the evictable set long before it becomes the oldest.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the request head: may be evicted.
    Reading,
    /// Being answered: stays.
    Answering,
}

struct Place {
    source: IpAddr,
    phase: Phase,
    /// Dropping or sending ends the connection's wait for its head.
    evict: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Places {
    next_id: u64,
    /// By admission order: the first entry is the oldest.
    held: BTreeMap<u64, Place>,
}

/// What happened at admission.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted {
    /// A place, with no one evicted.
    Free(Ticket),
    /// A place, freed by evicting an older connection waiting for its head.
    Evicted(Ticket),
    /// Every place is held by connections being answered: the new one is
    /// closed. Only possible with more answers in flight than places.
    Full,
}

/// The endpoint's places: `capacity` in all, `per_source` for one address.
#[derive(Clone)]
pub struct Admission {
    capacity: usize,
    per_source: usize,
    places: Arc<Mutex<Places>>,
}

/// A held place; dropping it frees the place.
pub struct Ticket {
    id: u64,
    places: Arc<Mutex<Places>>,
    /// Fires when the connection is evicted.
    pub evicted: Option<oneshot::Receiver<()>>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket({})", self.id)
    }
}

impl PartialEq for Ticket {
    fn eq(&self, other: &Ticket) -> bool {
        self.id == other.id
    }
}
impl Eq for Ticket {}

impl Admission {
    pub fn new(capacity: usize, per_source: usize) -> Admission {
        Admission {
            capacity: capacity.max(1),
            per_source: per_source.clamp(1, capacity.max(1)),
            places: Arc::default(),
        }
    }

    /// Admits a connection from `source`, evicting one if needed.
    pub fn admit(&self, source: IpAddr, phase: Phase) -> Admitted {
        let mut places = self.lock();
        let mut evicted = false;
        let from_source = places.held.values().filter(|p| p.source == source).count();
        if from_source >= self.per_source {
            match oldest_reading(&places, |s| s == source) {
                Some(id) => {
                    evict(&mut places, id);
                    evicted = true;
                }
                None => return Admitted::Full,
            }
        } else if places.held.len() >= self.capacity {
            let Some(busiest) = busiest_source_with_reading(&places) else {
                return Admitted::Full;
            };
            if let Some(id) = oldest_reading(&places, |s| s == busiest) {
                evict(&mut places, id);
                evicted = true;
            }
        }
        let id = places.next_id;
        places.next_id += 1;
        let (tx, rx) = oneshot::channel();
        places.held.insert(
            id,
            Place {
                source,
                phase,
                evict: Some(tx),
            },
        );
        let ticket = Ticket {
            id,
            places: self.places.clone(),
            evicted: Some(rx),
        };
        if evicted {
            Admitted::Evicted(ticket)
        } else {
            Admitted::Free(ticket)
        }
    }

    /// Places held now.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Places> {
        // A panic elsewhere while holding the lock leaves a map that is
        // still consistent (every change is one insert or remove).
        self.places.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Ticket {
    /// The head is in: from now on the connection is not evicted.
    pub fn answering(&self) {
        let mut places = self.places.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = places.held.get_mut(&self.id) {
            p.phase = Phase::Answering;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut places = self.places.lock().unwrap_or_else(|e| e.into_inner());
        places.held.remove(&self.id);
    }
}

fn evict(places: &mut Places, id: u64) {
    if let Some(mut p) = places.held.remove(&id)
        && let Some(tx) = p.evict.take()
    {
        let _ = tx.send(());
    }
}

fn oldest_reading(places: &Places, source: impl Fn(IpAddr) -> bool) -> Option<u64> {
    places
        .held
        .iter()
        .find(|(_, p)| p.phase == Phase::Reading && source(p.source))
        .map(|(&id, _)| id)
}

/// The source with the most places among those that have a connection
/// still reading (the ones that can be evicted).
fn busiest_source_with_reading(places: &Places) -> Option<IpAddr> {
    let mut count: BTreeMap<IpAddr, (usize, bool)> = BTreeMap::new();
    for p in places.held.values() {
        let e = count.entry(p.source).or_default();
        e.0 += 1;
        e.1 |= p.phase == Phase::Reading;
    }
    count
        .into_iter()
        .filter(|(_, (_, reading))| *reading)
        .max_by_key(|(_, (n, _))| *n)
        .map(|(ip, _)| ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn ticket(a: Admitted) -> Ticket {
        match a {
            Admitted::Free(t) | Admitted::Evicted(t) => t,
            Admitted::Full => panic!("refused"),
        }
    }

    #[test]
    fn when_full_the_oldest_reader_of_the_busiest_source_goes() {
        let adm = Admission::new(3, 3);
        let mut a1 = ticket(adm.admit(ip(1), Phase::Reading));
        let _a2 = ticket(adm.admit(ip(1), Phase::Reading));
        let _b1 = ticket(adm.admit(ip(2), Phase::Reading));
        let c = adm.admit(ip(3), Phase::Reading);
        assert!(matches!(c, Admitted::Evicted(_)));
        assert_eq!(adm.held(), 3);
        assert!(a1.evicted.as_mut().unwrap().try_recv().is_ok(), "a1 told");
    }

    #[test]
    fn a_source_at_its_share_evicts_its_own_oldest() {
        let adm = Admission::new(10, 2);
        let _other = ticket(adm.admit(ip(9), Phase::Reading));
        let mut first = ticket(adm.admit(ip(1), Phase::Reading));
        let _second = ticket(adm.admit(ip(1), Phase::Reading));
        let _third = ticket(adm.admit(ip(1), Phase::Reading));
        assert!(first.evicted.as_mut().unwrap().try_recv().is_ok());
        assert_eq!(adm.held(), 3, "ip 9 kept its place");
    }

    #[test]
    fn connections_being_answered_are_never_evicted() {
        let adm = Admission::new(2, 2);
        let a = ticket(adm.admit(ip(1), Phase::Reading));
        a.answering();
        let _b = ticket(adm.admit(ip(1), Phase::Answering));
        assert_eq!(adm.admit(ip(1), Phase::Reading), Admitted::Full);
        drop(a);
        assert!(matches!(
            adm.admit(ip(1), Phase::Reading),
            Admitted::Free(_)
        ));
    }
}
