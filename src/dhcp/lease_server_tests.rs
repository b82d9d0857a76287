use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use dhcproto::Name;
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use ipnet::Ipv4Net;

use super::{DECLINE_HOLDOFF, Destination, LeaseServer, Reply};
use crate::dhcp::config::DhcpConfig;
use crate::dhcp::config::tests::example;
use crate::dhcp::stats::DhcpStats;

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const OTHER_MAC: [u8; 6] = [0x52, 0x54, 0, 0xab, 0xcd, 0xef];

fn server() -> LeaseServer {
    LeaseServer::new(example()).expect("valid config")
}

fn msg(kind: MessageType, mac: [u8; 6]) -> Message {
    let mut m = Message::default();
    m.set_xid(0x1234_5678).set_chaddr(&mac);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

fn with(mut m: Message, opt: DhcpOption) -> Message {
    m.opts_mut().insert(opt);
    m
}

fn selecting(ip: Ipv4Addr, server: Ipv4Addr) -> Message {
    let m = with(
        msg(MessageType::Request, MAC),
        DhcpOption::RequestedIpAddress(ip),
    );
    with(m, DhcpOption::ServerIdentifier(server))
}

fn renewing(ciaddr: Ipv4Addr) -> Message {
    let mut m = msg(MessageType::Request, MAC);
    m.set_ciaddr(ciaddr);
    m
}

/// Every handled message goes through the wire format both ways, as the
/// socket layer would see it.
fn exchange(s: &mut LeaseServer, m: &Message, now: Instant) -> Option<Reply> {
    let bytes = m.to_vec().expect("encode request");
    let reply = s.handle_packet(&bytes, now)?;
    let wire = reply.to_bytes().expect("encode reply");
    let decoded = Message::from_bytes(&wire).expect("reply decodes");
    assert_eq!(decoded.opts().msg_type(), Some(reply.kind));
    assert_eq!(decoded.xid(), m.xid(), "xid echoed");
    assert_eq!(decoded.opcode(), Opcode::BootReply);
    assert_eq!(decoded.chaddr(), &MAC);
    Some(Reply {
        message: decoded,
        ..reply
    })
}

fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
    m.opts().get(code)
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    DhcpStats::get(c)
}

#[test]
fn discover_is_offered_the_guest_address_with_every_option() {
    let mut s = server();
    let now = Instant::now();
    let r = exchange(&mut s, &msg(MessageType::Discover, MAC), now).expect("an offer");
    assert_eq!(r.kind, MessageType::Offer);
    assert_eq!(r.to, Destination::Broadcast);
    let m = &r.message;
    assert_eq!(m.yiaddr(), GUEST);
    assert_eq!(m.ciaddr(), Ipv4Addr::UNSPECIFIED);
    let want = [
        DhcpOption::ServerIdentifier(SERVER),
        DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
        DhcpOption::BroadcastAddr(Ipv4Addr::new(10, 0, 1, 255)),
        DhcpOption::Router(vec![SERVER]),
        DhcpOption::DomainNameServer(vec![SERVER]),
        DhcpOption::Hostname("web-0".into()),
        DhcpOption::DomainName("cluster.local".into()),
        DhcpOption::InterfaceMtu(1450),
        DhcpOption::AddressLeaseTime(3600),
        DhcpOption::Renewal(1800),
        DhcpOption::Rebinding(3150),
        DhcpOption::DomainSearch(vec![
            Name::from_str("default.svc.cluster.local.").unwrap(),
            Name::from_str("svc.cluster.local.").unwrap(),
        ]),
    ];
    for w in want {
        assert_eq!(opt(m, OptionCode::from(&w)), Some(&w));
    }
    assert!(opt(m, OptionCode::ClasslessStaticRoute).is_none());
    assert!(s.lease().is_none(), "an offer is not a lease");
    assert_eq!(count(&s.stats().discover), 1);
    assert_eq!(count(&s.stats().offer), 1);
}

#[test]
fn option_119_is_rfc_3397_encoded_with_compression() {
    let mut s = server();
    let r = s
        .handle(&msg(MessageType::Discover, MAC), Instant::now())
        .unwrap();
    let wire = r.to_bytes().unwrap();
    // "default.svc.cluster.local" then a pointer to "svc.cluster.local" at offset 8.
    let mut want = vec![119u8, 29, 7];
    want.extend(b"default");
    want.push(3);
    want.extend(b"svc");
    want.push(7);
    want.extend(b"cluster");
    want.push(5);
    want.extend(b"local");
    want.extend([0, 0xC0, 8]);
    assert!(
        wire.windows(want.len()).any(|w| w == want),
        "option 119 not found as {want:?}"
    );
}

#[test]
fn broadcast_flag_is_echoed_and_the_reply_broadcast() {
    let mut s = server();
    let mut d = msg(MessageType::Discover, MAC);
    d.set_flags(Flags::default().set_broadcast());
    let r = exchange(&mut s, &d, Instant::now()).unwrap();
    assert!(r.message.flags().broadcast());
    assert_eq!(r.to, Destination::Broadcast);
    let r = exchange(&mut s, &msg(MessageType::Discover, MAC), Instant::now()).unwrap();
    assert!(!r.message.flags().broadcast());
    assert_eq!(
        r.to,
        Destination::Broadcast,
        "no raw socket: broadcast anyway"
    );
}

#[test]
fn selecting_request_is_acked_and_the_lease_published() {
    let mut s = server();
    let watch = s.lease_watch();
    let now = Instant::now();
    let r = exchange(&mut s, &selecting(GUEST, SERVER), now).unwrap();
    assert_eq!(r.kind, MessageType::Ack);
    assert_eq!(r.to, Destination::Broadcast);
    assert_eq!(r.message.yiaddr(), GUEST);
    assert_eq!(
        opt(&r.message, OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    let lease = watch.borrow().clone().expect("lease published");
    assert_eq!(lease.ip, GUEST);
    assert_eq!(lease.mac, MAC);
    assert_eq!(lease.expires, now + Duration::from_secs(3600));
    assert_eq!(count(&s.stats().leases_granted), 1);
    assert_eq!(count(&s.stats().ack), 1);
}

#[test]
fn request_for_another_server_is_ignored() {
    let mut s = server();
    let r = exchange(
        &mut s,
        &selecting(GUEST, Ipv4Addr::new(10, 0, 1, 9)),
        Instant::now(),
    );
    assert!(r.is_none());
    assert!(s.lease().is_none());
}

#[test]
fn selecting_with_ciaddr_instead_of_option_50_is_acked() {
    let mut s = server();
    let mut m = with(
        msg(MessageType::Request, MAC),
        DhcpOption::ServerIdentifier(SERVER),
    );
    m.set_ciaddr(GUEST);
    let r = exchange(&mut s, &m, Instant::now()).unwrap();
    assert_eq!(r.kind, MessageType::Ack);
}

#[test]
fn selecting_another_address_is_naked() {
    let mut s = server();
    let r = exchange(
        &mut s,
        &selecting(Ipv4Addr::new(10, 0, 1, 77), SERVER),
        Instant::now(),
    )
    .unwrap();
    assert_eq!(r.kind, MessageType::Nak);
    assert_eq!(r.to, Destination::Broadcast);
    assert_eq!(r.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(opt(&r.message, OptionCode::AddressLeaseTime).is_none());
    assert!(s.lease().is_none());
    assert_eq!(count(&s.stats().nak), 1);
}

#[test]
fn init_reboot_keeps_the_right_address_and_naks_a_wrong_one() {
    let mut s = server();
    let reboot = |ip| {
        with(
            msg(MessageType::Request, MAC),
            DhcpOption::RequestedIpAddress(ip),
        )
    };
    let r = exchange(&mut s, &reboot(GUEST), Instant::now()).unwrap();
    assert_eq!(r.kind, MessageType::Ack);
    assert_eq!(r.to, Destination::Broadcast);
    // A guest moved from another network remembers another address.
    let r = exchange(
        &mut s,
        &reboot(Ipv4Addr::new(192, 168, 1, 50)),
        Instant::now(),
    )
    .unwrap();
    assert_eq!(r.kind, MessageType::Nak);
}

#[test]
fn renewing_is_acked_by_broadcast_and_extends_the_lease() {
    let mut s = server();
    let t0 = Instant::now();
    exchange(&mut s, &selecting(GUEST, SERVER), t0).unwrap();
    let t1 = t0 + Duration::from_secs(1800);
    let r = exchange(&mut s, &renewing(GUEST), t1).unwrap();
    assert_eq!(r.kind, MessageType::Ack);
    assert_eq!(r.to, Destination::Broadcast, "see destination()");
    assert_eq!(r.message.yiaddr(), GUEST);
    assert_eq!(r.message.ciaddr(), GUEST);
    assert_eq!(s.lease().unwrap().expires, t1 + Duration::from_secs(3600));
    assert_eq!(count(&s.stats().leases_granted), 2);
}

#[test]
fn rebinding_after_a_restart_of_the_server_is_acked() {
    // A new server (vmpod restarted) has no lease but knows the guest's address.
    let mut s = server();
    let r = exchange(&mut s, &renewing(GUEST), Instant::now()).unwrap();
    assert_eq!(r.kind, MessageType::Ack);
    assert!(s.lease().is_some());
}

#[test]
fn renewing_another_address_is_naked() {
    let mut s = server();
    let r = exchange(
        &mut s,
        &renewing(Ipv4Addr::new(10, 0, 1, 3)),
        Instant::now(),
    )
    .unwrap();
    assert_eq!(r.kind, MessageType::Nak);
    assert_eq!(r.to, Destination::Broadcast, "a NAK is always broadcast");
}

#[test]
fn request_without_any_address_is_ignored() {
    let mut s = server();
    assert!(exchange(&mut s, &msg(MessageType::Request, MAC), Instant::now()).is_none());
}

#[test]
fn release_ends_the_lease() {
    let mut s = server();
    let watch = s.lease_watch();
    let now = Instant::now();
    exchange(&mut s, &selecting(GUEST, SERVER), now).unwrap();
    let mut rel = with(
        msg(MessageType::Release, MAC),
        DhcpOption::ServerIdentifier(SERVER),
    );
    rel.set_ciaddr(GUEST);
    assert!(
        exchange(&mut s, &rel, now).is_none(),
        "RELEASE has no reply"
    );
    assert!(s.lease().is_none());
    assert!(watch.borrow().is_none());
    assert_eq!(count(&s.stats().release), 1);
}

#[test]
fn release_for_another_server_is_ignored() {
    let mut s = server();
    let now = Instant::now();
    exchange(&mut s, &selecting(GUEST, SERVER), now).unwrap();
    let mut rel = with(
        msg(MessageType::Release, MAC),
        DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 1, 9)),
    );
    rel.set_ciaddr(GUEST);
    exchange(&mut s, &rel, now);
    assert!(s.lease().is_some());
}

#[test]
fn decline_ends_the_lease_and_pauses_offers() {
    let mut s = server();
    let now = Instant::now();
    exchange(&mut s, &selecting(GUEST, SERVER), now).unwrap();
    let dec = with(
        with(
            msg(MessageType::Decline, MAC),
            DhcpOption::RequestedIpAddress(GUEST),
        ),
        DhcpOption::ServerIdentifier(SERVER),
    );
    assert!(exchange(&mut s, &dec, now).is_none());
    assert!(s.lease().is_none());
    assert!(exchange(&mut s, &msg(MessageType::Discover, MAC), now).is_none());
    let r = exchange(&mut s, &selecting(GUEST, SERVER), now).unwrap();
    assert_eq!(r.kind, MessageType::Nak, "no lease during the hold-off");
    let later = now + DECLINE_HOLDOFF;
    let r = exchange(&mut s, &msg(MessageType::Discover, MAC), later).unwrap();
    assert_eq!(r.kind, MessageType::Offer);
    assert_eq!(count(&s.stats().decline), 1);
}

#[test]
fn inform_gets_options_but_no_lease() {
    let mut s = server();
    let mut inf = msg(MessageType::Inform, MAC);
    inf.set_ciaddr(GUEST);
    let r = exchange(&mut s, &inf, Instant::now()).unwrap();
    assert_eq!(r.kind, MessageType::Ack);
    assert_eq!(r.to, Destination::Unicast(GUEST));
    assert_eq!(r.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(opt(&r.message, OptionCode::AddressLeaseTime).is_none());
    assert!(opt(&r.message, OptionCode::DomainNameServer).is_some());
    assert!(s.lease().is_none());
    assert_eq!(count(&s.stats().leases_granted), 0);
    assert_eq!(count(&s.stats().inform), 1);
}

#[test]
fn lease_expires() {
    let mut s = server();
    let watch = s.lease_watch();
    let now = Instant::now();
    exchange(&mut s, &selecting(GUEST, SERVER), now).unwrap();
    let expires = now + Duration::from_secs(3600);
    assert_eq!(s.expire(now), Some(expires));
    assert_eq!(s.expire(expires), None);
    assert!(watch.borrow().is_none());
}

#[test]
fn foreign_macs_are_ignored_counted_and_remembered_boundedly() {
    let mut s = server();
    for kind in [
        MessageType::Discover,
        MessageType::Request,
        MessageType::Inform,
    ] {
        assert!(s.handle(&msg(kind, OTHER_MAC), Instant::now()).is_none());
    }
    assert_eq!(count(&s.stats().foreign_mac), 3);
    assert_eq!(s.foreign.seen.len(), 1, "logged once");
    for i in 0..1000u32 {
        let b = i.to_be_bytes();
        let mac = [0x02, 0, b[0], b[1], b[2], b[3]];
        s.handle(&msg(MessageType::Discover, mac), Instant::now());
    }
    assert!(s.foreign.seen.len() <= super::FOREIGN_MACS_LOGGED);
    assert_eq!(count(&s.stats().foreign_mac), 1003);
    assert_eq!(
        count(&s.stats().discover),
        0,
        "foreign packets are not the guest's"
    );
}

#[test]
fn relayed_messages_are_ignored() {
    let mut s = server();
    let mut d = msg(MessageType::Discover, MAC);
    d.set_giaddr(Ipv4Addr::new(10, 9, 9, 9));
    assert!(exchange(&mut s, &d, Instant::now()).is_none());
}

#[test]
fn malformed_packets_are_dropped_and_counted() {
    let mut s = server();
    let good = msg(MessageType::Discover, MAC).to_vec().unwrap();
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![1; 10],
        good[..239].to_vec(),
        good[..241].to_vec(),
    ];
    let mut bad_cookie = good.clone();
    bad_cookie[236] = 0;
    cases.push(bad_cookie);
    let mut reply_op = good.clone();
    reply_op[0] = 2;
    cases.push(reply_op);
    let mut long_hlen = good.clone();
    long_hlen[2] = 200; // chaddr() would slice past 16 bytes
    cases.push(long_hlen);
    let mut no_type = msg(MessageType::Discover, MAC);
    no_type.opts_mut().remove(OptionCode::MessageType);
    cases.push(no_type.to_vec().unwrap());
    let mut truncated_option = good[..240].to_vec();
    truncated_option.extend([53, 1]);
    cases.push(truncated_option);
    // Lengths dhcproto 0.15 asserts on (152: a u32 of length 0; 151: len - 1).
    for (code, len) in [
        (152u8, 0u8),
        (151, 0),
        (81, 1),
        (80, 2),
        (94, 1),
        (53, 2),
        (54, 3),
    ] {
        let mut p = good[..240].to_vec();
        p.extend([53, 1, 1, code, len]);
        p.extend(std::iter::repeat_n(7, len as usize));
        p.push(255);
        cases.push(p);
    }
    let mut option_past_the_end = good[..240].to_vec();
    option_past_the_end.extend([53, 1, 1, 12, 40, b'x']);
    cases.push(option_past_the_end);
    let n = cases.len() as u64;
    for c in cases {
        assert!(s.handle_packet(&c, Instant::now()).is_none(), "{c:?}");
    }
    assert_eq!(count(&s.stats().malformed), n);
    assert!(
        s.handle_packet(&good, Instant::now()).is_some(),
        "still serving"
    );
}

#[test]
fn classless_routes_carry_the_default_route() {
    let mut c = example();
    let net: Ipv4Net = "10.96.0.0/12".parse().unwrap();
    c.routes = vec![(net, SERVER)];
    let mut s = LeaseServer::new(c).unwrap();
    let r = exchange(&mut s, &msg(MessageType::Discover, MAC), Instant::now()).unwrap();
    assert_eq!(
        opt(&r.message, OptionCode::ClasslessStaticRoute),
        Some(&DhcpOption::ClasslessStaticRoute(vec![
            (net, SERVER),
            (Ipv4Net::default(), SERVER)
        ]))
    );
}

#[test]
fn options_that_do_not_fit_are_a_config_error() {
    let mut c: DhcpConfig = example();
    c.search = (0..20)
        .map(|i| format!("domain-number-{i}.example-with-a-long-name.test"))
        .collect();
    let err = LeaseServer::new(c).err().expect("too large").to_string();
    assert!(err.contains("576"), "{err}");
}
