use super::*;

#[test]
fn loopback_and_peer_carry_frames_in_order() {
    let mut l = Loopback::default();
    l.transmit(&[1, 2, 3]);
    l.transmit(&[4]);
    let mut b = Vec::new();
    assert!(l.receive(&mut b));
    assert_eq!(b, [1, 2, 3]);
    assert!(l.receive(&mut b));
    assert_eq!(b, [4]);
    assert!(!l.receive(&mut b));

    let (mut a, mut z) = peer_pair("a", "z");
    a.transmit(&[9; 60]);
    assert!(!a.receive(&mut b));
    assert!(z.receive(&mut b));
    assert_eq!(b.len(), 60);
    assert_eq!(z.describe(), "peer=a");
}

#[test]
fn in_place_transmit_and_receive_carry_frames_and_abandon_on_request() {
    let mut l = Loopback::default();
    assert!(l.transmit_with(5, &mut |b| {
        b.copy_from_slice(&[1, 2, 3, 4, 5]);
        true
    }));
    assert!(!l.transmit_with(3, &mut |_| false), "abandoned frames are not sent");
    assert!(!l.transmit_with(MAX_FRAME + 1, &mut |_| panic!("not called")));
    let mut got = Vec::new();
    assert!(l.receive_with(&mut |f| got.extend_from_slice(f)));
    assert_eq!(got, [1, 2, 3, 4, 5]);
    assert!(!l.receive_with(&mut |_| panic!("nothing waits")));
    let mut n = NullWire::default();
    let mut called = false;
    assert!(n.transmit_with(60, &mut |b| {
        called = b.len() == 60;
        true
    }));
    assert!(called, "a null wire still lets the device read the frame");
    assert_eq!(n.dropped, 1);
}

#[test]
fn frame_ring_keeps_order_wraps_and_drops_the_oldest_when_full() {
    // Room for 4 frames by count (bytes: the minimum, one MAX_FRAME).
    let mut r = FrameRing::new(4, 0);
    for i in 0..4u8 {
        r.push(&[i; 100]);
    }
    assert_eq!(r.len(), 4);
    r.push(&[9; 100]);
    assert_eq!((r.len(), r.dropped()), (4, 1), "full by count: the oldest goes");
    assert_eq!(r.front(), Some(&[1u8; 100][..]));
    // Full by bytes: a big frame pushes out what it overlaps, order is kept.
    let mut r = FrameRing::new(64, MAX_FRAME);
    r.push(&[1; 6000]);
    r.push(&[2; 6000]);
    r.push(&[3; 6000]);
    assert_eq!(r.dropped(), 1);
    let mut b = Vec::new();
    assert!(r.pop_into(&mut b));
    assert_eq!((b.len(), b[0]), (6000, 2));
    // Frame 3 sits at the front now; frame 4 goes right after it.
    r.push(&[4; 5000]);
    assert_eq!(r.dropped(), 1);
    for want in [3u8, 4] {
        assert!(r.pop_into(&mut b));
        assert!(b.iter().all(|x| *x == want), "frame {want}");
    }
    assert!(!r.pop_into(&mut b));
    // Sustained mixed sizes through a small ring: FIFO, nothing lost while it keeps up.
    let mut r = FrameRing::new(8, MAX_FRAME);
    let mut next = 0u32;
    for i in 0..10_000u32 {
        let len = 1 + (i as usize * 7919) % 3000;
        r.push(&vec![i as u8; len]);
        if i % 3 != 0 {
            assert!(r.pop_into(&mut b));
            assert!(b.iter().all(|x| *x == next as u8), "frame {next}");
            next += 1;
        }
        while r.len() > 4 {
            assert!(r.pop_into(&mut b));
            assert_eq!(b[0], next as u8);
            next += 1;
        }
    }
    assert_eq!(r.dropped(), 0);
}

#[test]
fn a_burst_writer_appends_in_order_only_where_it_drops_nothing_and_peek_and_pop_n_read_it_back() {
    let bytes = MAX_FRAME.next_multiple_of(64);
    // An empty ring: the writer starts at the front and stops at the end of the bytes (100-byte
    // frames take 128), without dropping or wrapping.
    let mut r = FrameRing::new(1000, 0);
    let fits = bytes / 128;
    {
        let mut w = r.writer();
        for i in 0..fits {
            assert!(w.push_in(100, |b| {
                b.fill(i as u8);
                true
            }));
        }
        assert!(!w.push_in(100, |_| true), "no room left before the end");
        assert!(!w.push_in(64, |_| false), "an abandoned frame");
    }
    assert_eq!((r.len(), r.dropped()), (fits, 0));
    for i in [0, 1, fits - 1] {
        assert_eq!(r.peek(i), Some(&[i as u8; 100][..]), "frame {i}");
    }
    assert_eq!(r.peek(fits), None);
    // The ring's own push makes room (dropping the oldest); the writer never does. With the
    // end of the bytes taken, it goes on at the front, before the oldest frame (two slots).
    r.pop_n(2);
    assert_eq!(r.front(), Some(&[2u8; 100][..]));
    {
        let mut w = r.writer();
        assert!(!w.push_in(100, |_| false), "abandoned where it would wrap: no wrap");
        assert!(w.push_in(100, |b| {
            b.fill(0xa0);
            true
        }));
        assert!(w.push_in(128, |b| {
            b.fill(0xa1);
            true
        }));
        assert!(!w.push_in(1, |_| true), "the gap is full");
    }
    assert_eq!((r.len(), r.dropped()), (fits, 0));
    assert_eq!(r.peek(fits - 2), Some(&[0xa0u8; 100][..]));
    assert_eq!(r.peek(fits - 1), Some(&[0xa1u8; 128][..]));
    r.push(&[0xb0; 100]);
    assert_eq!(r.dropped(), 1, "the ring's push drops the oldest");
    r.pop_n(r.len() - 3);
    let rest: Vec<_> = (0..3).map(|i| r.peek(i).unwrap()[0]).collect();
    assert_eq!(rest, [0xa0, 0xa1, 0xb0]);
    r.pop_n(10);
    assert!(r.is_empty());
    // Full by count: the writer's room is the records free.
    let mut r = FrameRing::new(4, 0);
    for i in 0..3u8 {
        r.push(&[i; 60]);
    }
    {
        let mut w = r.writer();
        assert!(w.push_in(60, |_| true));
        assert!(!w.push_in(60, |_| true), "no record free");
    }
    assert_eq!((r.len(), r.dropped()), (4, 0));
}

#[test]
fn pcap_tx_output_replays_as_rx_input() {
    let d = tempfile::tempdir().unwrap();
    let first = d.path().join("a.pcap");
    let second = d.path().join("b.pcap");
    // Create a pcap by transmitting into it (rx side needs any valid pcap: bootstrap one).
    {
        let mut boot = File::create(&first).unwrap();
        let mut h = Vec::new();
        h.extend_from_slice(&PCAP_MAGIC.to_le_bytes());
        h.extend_from_slice(&[2, 0, 4, 0]);
        h.extend_from_slice(&[0; 8]);
        h.extend_from_slice(&65535u32.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        boot.write_all(&h).unwrap();
    }
    let mut w = PcapWire::open(&first, &second).unwrap();
    w.transmit(&[0xab; 64]);
    w.transmit(&[0xcd; 100]);
    drop(w);
    let mut r = PcapWire::open(&second, &d.path().join("c.pcap")).unwrap();
    let mut b = Vec::new();
    assert!(r.receive(&mut b));
    assert_eq!(b, vec![0xab; 64]);
    assert!(r.receive(&mut b));
    assert_eq!(b, vec![0xcd; 100]);
    assert!(!r.receive(&mut b));
    assert!(PcapWire::open(&d.path().join("missing"), &second).is_err());
}

/// A burst through the rings (`tx_ring`, `rx_ring`) is the same stream as frame by frame: a
/// peer's frames arrive at the other end in order, an abandoned or oversize frame is not sent,
/// a loopback's come back, and wires without a ring (or with it hidden) say so and call nothing.
#[test]
fn bursts_through_the_rings_carry_the_frames_in_order() {
    let (mut a, mut z) = peer_pair("a", "z");
    assert!(a.tx_ring(&mut |r| {
        for i in 0..10u8 {
            assert!(r.push_in(60 + usize::from(i), |b| {
                b.fill(i);
                true
            }));
        }
        assert!(!r.push_in(60, |_| false), "abandoned");
        assert!(!r.push_in(MAX_FRAME + 1, |_| panic!("not called")));
    }));
    // The sender's own receive ring holds nothing; the other end has the ten, in order.
    assert!(a.rx_ring(&mut |r| assert!(r.is_empty())));
    let mut got = Vec::new();
    assert!(z.rx_ring(&mut |r| {
        assert_eq!(r.drain_in(4, |f| got.push((f.len(), f[0]))), 4, "at most the burst asked for");
    }));
    // The rest, frame by frame.
    let mut b = Vec::new();
    while z.receive(&mut b) {
        got.push((b.len(), b[0]));
    }
    assert_eq!(got, (0..10u8).map(|i| (60 + usize::from(i), i)).collect::<Vec<_>>());

    let mut l = Loopback::default();
    assert!(l.tx_ring(&mut |r| assert!(r.push_in(3, |b| {
        b.copy_from_slice(&[7, 8, 9]);
        true
    }))));
    assert!(!l.loops_back_idle());
    assert!(l.receive(&mut b));
    assert_eq!(b, [7, 8, 9]);

    let mut hidden = FrameByFrame(QueuedLoopback::default());
    assert!(!hidden.tx_ring(&mut |_| panic!("no ring")));
    assert!(!hidden.rx_ring(&mut |_| panic!("no ring")));
    assert!(!NullWire::default().tx_ring(&mut |_| panic!("no ring")));
}
