// The .evz container (docs/FORMAT.md §1-§2): its constants, CRC-32, varints, and the framing
// reader and writer. Payloads are opaque here; codec.js fills and reads them.

import { ContainerError } from "./errors.js";

// -- constants (runtime/container.py holds the same numbers; FORMAT.md names them) -----------
export const MAGIC = 0xee;
export const VERSION = 1;
export const HEADER_BYTES = 3;
export const CRC_BYTES = 4;
export const FINGERPRINT_BYTES = 32;
export const MIN_BYTES = HEADER_BYTES + CRC_BYTES;
export const VERSION_SHIFT = 4;
export const MODE_SHIFT = 2;
export const MODE_MASK = 0x03;
export const MULTI_BIT = 0x02;
export const RESERVED_BIT = 0x01;
export const QUALITY_SHIFT = 4;
export const FINGERPRINT_PREFIX_MASK = 0x0f;
export const MAX_QUALITY_INDEX = 15;
export const MODE_LOSSY = 0;
export const MODE_LOSSLESS = 1;
export const MODE_NEAR_LOSSLESS = 2;
export const MODE_NAMES = { [MODE_LOSSY]: "lossy", [MODE_LOSSLESS]: "lossless", [MODE_NEAR_LOSSLESS]: "near-lossless" };
/** Version 2 holds near-lossless containers (mode 2) only; version 1 the others (FORMAT.md §6). */
export const NEAR_LOSSLESS_VERSION = 2;
/** Largest maximum error K of a near-lossless container. */
export const MAX_ERROR = 32;
/** Version 3 ("exact tables") holds lossless and near-lossless containers of integer bundles (FORMAT.md §7). */
export const EXACT_VERSION = 3;
/** The newest version this reader knows. */
export const NEWEST_VERSION = EXACT_VERSION;
export const VERSION_MODES = {
  [VERSION]: [MODE_LOSSY, MODE_LOSSLESS], [NEAR_LOSSLESS_VERSION]: [MODE_NEAR_LOSSLESS],
  [EXACT_VERSION]: [MODE_LOSSLESS, MODE_NEAR_LOSSLESS],
};
export const MAX_LOSSLESS_IMAGES_PER_BYTE = 8;
export const MAX_NEAR_LOSSLESS_IMAGES_PER_BYTE = 1;
export const MAX_VARINT_BYTES = 5;
export const MAX_COUNT = 2 ** 32 - 1;

// -- CRC-32 (ISO-HDLC: reflected polynomial 0xEDB88320, init and final xor 0xFFFFFFFF) -------
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 of `bytes`, continuing from `crc` (the CRC of what came before, 0 for none): zlib.crc32. */
export function crc32(bytes, crc = 0) {
  let c = ~crc >>> 0;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/** The container checksum: CRC-32 of body + the 32-byte fingerprint + C, H, W as big-endian u32. */
export function checksum(body, fingerprint, geometry) {
  if (fingerprint.length !== FINGERPRINT_BYTES) throw new Error(`fingerprint must be ${FINGERPRINT_BYTES} bytes`);
  const tail = new Uint8Array(FINGERPRINT_BYTES + 12);
  tail.set(fingerprint);
  const view = new DataView(tail.buffer);
  geometry.forEach((size, i) => view.setUint32(FINGERPRINT_BYTES + 4 * i, size));
  return crc32(tail, crc32(body));
}

/** The 4 fingerprint bits a header stores: the high nibble of the fingerprint's byte 0. */
export function fingerprintPrefix(fingerprint) {
  return fingerprint[0] >> 4;
}

// -- varints (unsigned LEB128) ---------------------------------------------------------------

/** Unsigned LEB128 bytes of a non-negative integer (below 2**53). */
export function encodeVarint(value) {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError("varints are unsigned integers");
  const out = [];
  for (;;) {
    const low = value % 128;
    value = Math.floor(value / 128);
    if (value) out.push(low | 0x80);
    else {
      out.push(low);
      return out;
    }
  }
}

/** One canonical varint at `pos`, before `end`: [value, next position]. ContainerError if malformed. */
export function decodeVarint(data, pos, end, what) {
  let value = 0;
  for (let i = 0; i < MAX_VARINT_BYTES; i++) {
    if (pos + i >= end) throw new ContainerError(`container is truncated (inside the ${what})`);
    const byte = data[pos + i];
    value += (byte & 0x7f) * 2 ** (7 * i);
    if (!(byte & 0x80)) {
      if (byte === 0 && i > 0) throw new ContainerError(`container is damaged (over-long ${what})`);
      return [value, pos + i + 1];
    }
  }
  throw new ContainerError(`container is damaged (${what} longer than ${MAX_VARINT_BYTES} bytes)`);
}

// -- framing ---------------------------------------------------------------------------------

/** The byte arrays ``parts`` one after another in one Uint8Array. */
export function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function withChecksum(parts, fingerprint, geometry) {
  const body = concat(parts);
  const out = new Uint8Array(body.length + CRC_BYTES);
  out.set(body);
  new DataView(out.buffer).setUint32(body.length, checksum(body, fingerprint, geometry));
  return out;
}

/** A lossy container from per-image payloads (Uint8Array each): the inverse of `parse`. */
export function pack(mode, quality, fingerprint, geometry, payloads) {
  if (!payloads.length) throw new RangeError("a container holds at least one image");
  if (!(quality >= 0 && quality <= MAX_QUALITY_INDEX) || !(mode in MODE_NAMES)) {
    throw new RangeError(`mode ${mode} / quality ${quality} do not fit the header`);
  }
  const multi = payloads.length > 1;
  const parts = [Uint8Array.of(MAGIC, (VERSION << VERSION_SHIFT) | (mode << MODE_SHIFT) | (multi ? MULTI_BIT : 0),
    (quality << QUALITY_SHIFT) | fingerprintPrefix(fingerprint))];
  if (multi) {
    parts.push(Uint8Array.from(encodeVarint(payloads.length)));
    for (const p of payloads.slice(0, -1)) parts.push(Uint8Array.from(encodeVarint(p.length)));
  }
  parts.push(...payloads);
  return withChecksum(parts, fingerprint, geometry);
}

/** Magic, version and the fixed fields, checked in FORMAT.md §2's order: [header, position after it]. */
export function readHeader(data) {
  if (data.length < 2 || data[0] !== MAGIC) throw new ContainerError("not an edgevae container (.evz): wrong magic byte");
  const version = data[1] >> VERSION_SHIFT;
  if (!(version in VERSION_MODES)) {
    if (version > NEWEST_VERSION) {
      throw new ContainerError(`container format version ${version} is newer than this edgevae supports (${NEWEST_VERSION}); upgrade edgevae`);
    }
    throw new ContainerError(`not an edgevae container (unknown format version ${version})`);
  }
  if (data.length < MIN_BYTES) {
    throw new ContainerError(`container is truncated (${data.length} bytes, at least ${MIN_BYTES} needed)`);
  }
  const flags = data[1];
  const mode = (flags >> MODE_SHIFT) & MODE_MASK;
  if (!VERSION_MODES[version].includes(mode)) {
    throw new ContainerError(`container is damaged (reserved mode ${mode} for format version ${version})`);
  }
  if (flags & RESERVED_BIT) throw new ContainerError("container is damaged (reserved header bit set)");
  const end = data.length - CRC_BYTES;
  let pos = HEADER_BYTES;
  let count = 1;
  if (flags & MULTI_BIT) {
    [count, pos] = decodeVarint(data, pos, end, "image count");
    if (count < 2) throw new ContainerError("container is damaged (multi-image container with fewer than 2 images)");
    // Bound the count by the bytes present before anything proportional to it exists.
    const room = mode === MODE_LOSSY ? end - pos + 1
      : (mode === MODE_LOSSLESS ? MAX_LOSSLESS_IMAGES_PER_BYTE : MAX_NEAR_LOSSLESS_IMAGES_PER_BYTE) * (end - pos);
    if (count > MAX_COUNT || count > room) {
      throw new ContainerError(`container is damaged or truncated (claims ${count} images in ${data.length} bytes)`);
    }
  }
  let maxError = 0;
  if (mode === MODE_NEAR_LOSSLESS) {  // read so that its framing errors match Python's; the codec then refuses it
    if (pos >= end) throw new ContainerError("container is truncated (before its maximum error)");
    maxError = data[pos++];
    if (!(maxError >= 1 && maxError <= MAX_ERROR)) {
      throw new ContainerError(`container is damaged (maximum error ${maxError} not in 1..${MAX_ERROR})`);
    }
    if (count > 1 && data[2] >> QUALITY_SHIFT) {
      throw new ContainerError("container is damaged (a latent level in a multi-image near-lossless container)");
    }
  }
  const header = {
    version, mode, modeName: MODE_NAMES[mode], quality: data[2] >> QUALITY_SHIFT,
    fingerprintPrefix: data[2] & FINGERPRINT_PREFIX_MASK, count, maxError,
  };
  return [header, pos];
}

/**
 * A container's structure (header and where each payload lies), without checking its CRC.
 * Returns {data, header, offsets, payload(i), verify(fingerprint, geometry), overheadBytes}.
 */
export function parse(input) {
  const data = input instanceof Uint8Array ? input : new Uint8Array(input);
  const [header, start] = readHeader(data);
  const end = data.length - CRC_BYTES;
  let offsets;
  if (header.mode !== MODE_LOSSY) {  // lossless and near-lossless: one payload for every image
    offsets = [start, end];
  } else {
    let pos = start;
    const lengths = [];
    for (let i = 0; i < header.count - 1; i++) {
      let length;
      [length, pos] = decodeVarint(data, pos, end, "payload length");
      lengths.push(length);
    }
    offsets = [pos];
    for (const length of lengths) {
      offsets.push(offsets[offsets.length - 1] + length);
      if (offsets[offsets.length - 1] > end) {
        throw new ContainerError("container is damaged or truncated (payload lengths exceed the file)");
      }
    }
    offsets.push(end);
  }
  return {
    data, header, offsets,
    overheadBytes: data.length - (offsets[offsets.length - 1] - offsets[0]),
    payload: (i) => data.subarray(offsets[i], offsets[i + 1]),
    verify(fingerprint, geometry) {
      const stored = new DataView(data.buffer, data.byteOffset, data.length).getUint32(end);
      if (stored !== checksum(data.subarray(0, end), fingerprint, geometry)) {
        throw new ContainerError("checksum mismatch: the file is damaged or truncated, or was made by another model " +
          "with the same fingerprint prefix");
      }
    },
  };
}

/**
 * What a container says about itself (no decoding), checked against a model's ``fingerprint`` and
 * ``imageShape`` when its fingerprint prefix matches. ``qualityName(header)`` names the quality
 * level of a container of that model (null when it has none).
 */
export function describe(bytes, fingerprint, imageShape, qualityName = () => null) {
  const parsed = parse(bytes);
  const { header } = parsed;
  const matches = header.fingerprintPrefix === fingerprintPrefix(fingerprint);
  if (matches) parsed.verify(fingerprint, imageShape);
  return {
    bytes: parsed.data.length, version: header.version, mode: header.modeName, qualityIndex: header.quality,
    quality: matches ? qualityName(header) : null, maxError: header.maxError || null,
    count: header.count, payloadBytes: parsed.data.length - parsed.overheadBytes, overheadBytes: parsed.overheadBytes,
    fingerprintPrefix: header.fingerprintPrefix.toString(16), modelMatches: matches,
  };
}

/** Parse ``bytes`` and verify them as a container of the model with ``fingerprint`` and
 * ``imageShape``; ContainerError naming both fingerprints when another model made it. */
export function openFor(bytes, fingerprint, imageShape) {
  const parsed = parse(bytes);
  const { header } = parsed;
  const prefix = fingerprintPrefix(fingerprint);
  if (header.fingerprintPrefix !== prefix) {
    throw new ContainerError(`container was made by another model (fingerprint ${header.fingerprintPrefix.toString(16)}.., ` +
      `this model is ${prefix.toString(16)}..) or its header is damaged; pass the bundle that made it with --model`);
  }
  parsed.verify(fingerprint, imageShape);
  return parsed;
}
