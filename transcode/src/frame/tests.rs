//! Unit tests for `frame`: encoding, incremental decoding, hostile lengths.

use super::*;

#[test]
fn encode_writes_flag_and_big_endian_length() {
    let frame = encode_frame(b"abc");
    assert_eq!(&frame[..], &[0, 0, 0, 0, 3, b'a', b'b', b'c']);
    assert_eq!(&encode_frame(b"")[..], &[0, 0, 0, 0, 0]);
}

#[test]
fn decoder_reassembles_frames_split_anywhere() {
    let mut wire = Vec::new();
    wire.extend_from_slice(&encode_frame(b"hello"));
    wire.extend_from_slice(&encode_frame(b""));
    wire.extend_from_slice(&encode_frame(&[7u8; 300]));
    for split in 1..wire.len() {
        let mut decoder = FrameDecoder::new(1024);
        let mut frames = Vec::new();
        for chunk in wire.chunks(split) {
            decoder.push(chunk);
            while let Some(f) = decoder.next_frame().expect("valid frames") {
                frames.push(f);
            }
        }
        decoder.finish().expect("ends on a boundary");
        assert_eq!(frames.len(), 3, "split {split}");
        assert_eq!(&frames[0].payload[..], b"hello");
        assert!(frames[1].payload.is_empty());
        assert_eq!(frames[2].payload.len(), 300);
        assert!(!frames[0].is_compressed() && !frames[0].is_trailers());
    }
}

#[test]
fn truncated_frame_is_reported_at_finish() {
    let wire = encode_frame(b"hello");
    let mut decoder = FrameDecoder::new(1024);
    decoder.push(&wire[..7]);
    assert_eq!(decoder.next_frame(), Ok(None));
    assert_eq!(decoder.finish(), Err(FrameError::Truncated { buffered: 7 }));
    // A header cut short is truncated too.
    let mut decoder = FrameDecoder::new(1024);
    decoder.push(&[0, 0]);
    assert_eq!(decoder.next_frame(), Ok(None));
    assert!(decoder.finish().is_err());
}

#[test]
fn huge_declared_length_fails_before_buffering_the_payload() {
    let mut decoder = FrameDecoder::new(1024);
    decoder.push(&[0, 0xff, 0xff, 0xff, 0xff]);
    let err = decoder.next_frame().expect_err("over the cap");
    assert_eq!(err, FrameError::TooLarge { declared: u64::from(u32::MAX), max: 1024 });
    assert!(err.to_string().contains("exceeds the maximum message size of 1024"));
}

#[test]
fn flags_are_reported() {
    let mut decoder = FrameDecoder::new(16);
    decoder.push(&[FLAG_COMPRESSED, 0, 0, 0, 1, 9, FLAG_TRAILERS, 0, 0, 0, 0]);
    let first = decoder.next_frame().expect("ok").expect("frame");
    assert!(first.is_compressed());
    let second = decoder.next_frame().expect("ok").expect("frame");
    assert!(second.is_trailers());
}

#[test]
fn upstream_headers_are_rewritten() {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("12"));
    headers.insert("grpc-accept-encoding", HeaderValue::from_static("gzip"));
    headers.insert("authorization", HeaderValue::from_static("Bearer x"));
    prepare_upstream_headers(&mut headers);
    assert_eq!(headers[CONTENT_TYPE], "application/grpc");
    assert_eq!(headers[TE], "trailers");
    assert!(!headers.contains_key(CONTENT_LENGTH));
    assert!(!headers.contains_key("grpc-accept-encoding"));
    assert_eq!(headers["authorization"], "Bearer x");
}
