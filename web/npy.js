// Reading and writing uint8 .npy files (NumPy's format, versions 1-3) for the command line.

import { InputError } from "./errors.js";

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

/** A uint8 .npy file's bytes -> {data: Uint8Array, shape: number[]}. InputError if it is anything else. */
export function readNpy(bytes, where = "input") {
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) throw new InputError(`${where}: not a .npy file`);
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const [start, length] = major === 1 ? [10, view.getUint16(8, true)] : major <= 3 ? [12, view.getUint32(8, true)] : [0, -1];
  if (length < 0 || start + length > bytes.length) throw new InputError(`${where}: unsupported or truncated .npy header`);
  const header = new TextDecoder(major === 3 ? "utf-8" : "latin1").decode(bytes.subarray(start, start + length));
  const descr = /'descr':\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) throw new InputError(`${where}: malformed .npy header`);
  if (!["|u1", "<u1", ">u1", "u1", "|b1"].includes(descr) || descr === "|b1") {
    throw new InputError(`${where}: images must be uint8 pixels 0..255, got dtype ${descr}`);
  }
  if (fortran === "True") throw new InputError(`${where}: Fortran-ordered arrays are not supported; save a C-ordered array`);
  const shape = shapeText.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const data = bytes.subarray(start + length);
  if (data.length !== count) throw new InputError(`${where}: .npy data holds ${data.length} bytes, its shape needs ${count}`);
  return { data: new Uint8Array(data), shape };
}

/** A uint8 array of `shape` as .npy (version 1.0) bytes, as numpy.save writes them. */
export function writeNpy(data, shape) {
  let header = `{'descr': '|u1', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
  const total = 10 + header.length + 1;
  header += " ".repeat((64 - (total % 64)) % 64) + "\n";
  const out = new Uint8Array(10 + header.length + data.length);
  out.set(MAGIC);
  out[6] = 1;
  out[7] = 0;
  new DataView(out.buffer).setUint16(8, header.length, true);
  out.set(new TextEncoder().encode(header), 10);
  out.set(data, 10 + header.length);
  return out;
}
