//! The API the connection manager uses, through the public surface only.

use qudag_crypto::{
    default_sealer, ChaChaSealer, Identity, OpenError, PeerId, RingSealer, Role, SealError, Sealer,
    SessionKey, KEY_LEN, LABEL_DIALER_TO_LISTENER, LABEL_LISTENER_TO_DIALER, TAG_LEN,
};

fn assert_send<T: Send + 'static>(_: &T) {}

/// One connection: two directions, each with its own key, boxed sealers.
#[test]
fn two_directions_over_boxed_sealers() {
    let d2l = [1u8; KEY_LEN];
    let l2d = [2u8; KEY_LEN];
    let mut dialer: [Box<dyn Sealer>; 2] = [
        Box::new(RingSealer::new(SessionKey::from_bytes(d2l))),
        Box::new(ChaChaSealer::new(SessionKey::from_slice(&l2d).unwrap())),
    ];
    let mut listener: [Box<dyn Sealer>; 2] = [
        default_sealer(SessionKey::from_bytes(l2d)),
        Box::new(ChaChaSealer::new(SessionKey::from_bytes(d2l))),
    ];
    assert_send(&dialer);
    assert_eq!(Role::Dialer.seal_label(), LABEL_DIALER_TO_LISTENER);
    assert_eq!(Role::Listener.seal_label(), LABEL_LISTENER_TO_DIALER);

    for round in 0..3u64 {
        let mut up = format!("ping {round}").into_bytes();
        let tag: [u8; TAG_LEN] = dialer[0].seal_in_place(round, b"h", &mut up).unwrap();
        listener[1]
            .open_in_place(round, b"h", &mut up, &tag)
            .unwrap();
        assert_eq!(up, format!("ping {round}").into_bytes());

        let mut down = format!("pong {round}").into_bytes();
        let tag = listener[0].seal_in_place(round, b"h", &mut down).unwrap();
        // The wrong direction's key does not open it.
        if round == 0 {
            let mut copy = down.clone();
            let mut wrong = ChaChaSealer::new(SessionKey::from_bytes(d2l));
            assert_eq!(
                wrong.open_in_place(0, b"h", &mut copy, &tag),
                Err(OpenError::Authentication)
            );
        }
        dialer[1]
            .open_in_place(round, b"h", &mut down, &tag)
            .unwrap();
        assert_eq!(down, format!("pong {round}").into_bytes());
    }
    assert_eq!(dialer[0].next_seal_seq(), 3);
    assert_eq!(dialer[1].next_open_seq(), 3);
    assert_eq!(
        dialer[0].seal_in_place(2, b"", &mut []),
        Err(SealError::Sequence {
            expected: 3,
            got: 2
        })
    );
}

#[test]
fn identity_save_load_through_public_api() {
    let dir = std::env::temp_dir().join(format!("qudag-crypto-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("id.key");
    let id = Identity::generate().unwrap();
    id.save(&path).unwrap();
    let back = Identity::load(&path).unwrap();
    assert_eq!(back.peer_id(), id.peer_id());
    let printed: PeerId = id.peer_id().to_string().parse().unwrap();
    assert!(printed.ct_eq(&back.peer_id()));
    std::fs::remove_dir_all(&dir).unwrap();
}
