/* Incremental MD5 (RFC 1321) over byte arrays, for checksums of multi-GB slide files read in
   slices: the whole file never has to be in memory. Written for TumorMap; no dependencies.

     const h = new TumorMapMD5();
     h.update(uint8array); ...; const hex = h.hex();
*/
(function (global) {
  "use strict";

  // Per-round shift amounts and the sine-derived constants of RFC 1321, section 3.4.
  const S = [
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
    5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20,
    4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
    6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
  ];
  const K = new Int32Array(64);
  for (let i = 0; i < 64; i++) {
    K[i] = Math.floor(Math.abs(Math.sin(i + 1)) * 4294967296) | 0;
  }

  class TumorMapMD5 {
    constructor() {
      this.state = new Int32Array([0x67452301, 0xefcdab89 | 0, 0x98badcfe | 0, 0x10325476]);
      this.buffer = new Uint8Array(64);
      this.buffered = 0;
      this.length = 0; // bytes seen so far (a double: exact up to 2^53)
      this.words = new Int32Array(16);
      this.finished = null;
    }

    block(bytes, offset) {
      const w = this.words;
      for (let i = 0; i < 16; i++) {
        const j = offset + i * 4;
        w[i] = bytes[j] | (bytes[j + 1] << 8) | (bytes[j + 2] << 16) | (bytes[j + 3] << 24);
      }
      let a = this.state[0], b = this.state[1], c = this.state[2], d = this.state[3];
      for (let i = 0; i < 64; i++) {
        let f, g;
        if (i < 16) { f = (b & c) | (~b & d); g = i; }
        else if (i < 32) { f = (d & b) | (~d & c); g = (5 * i + 1) & 15; }
        else if (i < 48) { f = b ^ c ^ d; g = (3 * i + 5) & 15; }
        else { f = c ^ (b | ~d); g = (7 * i) & 15; }
        const sum = (a + f + K[i] + w[g]) | 0;
        a = d; d = c; c = b;
        b = (b + ((sum << S[i]) | (sum >>> (32 - S[i])))) | 0;
      }
      this.state[0] = (this.state[0] + a) | 0;
      this.state[1] = (this.state[1] + b) | 0;
      this.state[2] = (this.state[2] + c) | 0;
      this.state[3] = (this.state[3] + d) | 0;
    }

    update(data) {
      if (this.finished) throw new Error("MD5 already finished");
      const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
      let pos = 0;
      this.length += bytes.length;
      if (this.buffered) {
        const take = Math.min(64 - this.buffered, bytes.length);
        this.buffer.set(bytes.subarray(0, take), this.buffered);
        this.buffered += take;
        pos = take;
        if (this.buffered < 64) return this;
        this.block(this.buffer, 0);
        this.buffered = 0;
      }
      for (; pos + 64 <= bytes.length; pos += 64) this.block(bytes, pos);
      if (pos < bytes.length) {
        this.buffer.set(bytes.subarray(pos), 0);
        this.buffered = bytes.length - pos;
      }
      return this;
    }

    hex() {
      if (!this.finished) {
        const bits = this.length * 8;
        const tail = new Uint8Array(this.buffered < 56 ? 64 : 128);
        tail.set(this.buffer.subarray(0, this.buffered));
        tail[this.buffered] = 0x80;
        // The message length in bits, little-endian, in the last 8 bytes.
        const at = tail.length - 8;
        const low = bits % 4294967296;
        const high = Math.floor(bits / 4294967296);
        for (let i = 0; i < 4; i++) {
          tail[at + i] = (low >>> (8 * i)) & 0xff;
          tail[at + 4 + i] = (high >>> (8 * i)) & 0xff;
        }
        for (let off = 0; off < tail.length; off += 64) this.block(tail, off);
        let out = "";
        for (let i = 0; i < 4; i++) {
          for (let k = 0; k < 4; k++) {
            out += ((this.state[i] >>> (8 * k)) & 0xff).toString(16).padStart(2, "0");
          }
        }
        this.finished = out;
      }
      return this.finished;
    }
  }

  global.TumorMapMD5 = TumorMapMD5;
})(typeof window !== "undefined" ? window : globalThis);
