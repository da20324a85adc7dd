//! Input generation: mutations of seeds and of earlier inputs, from a deterministic
//! random stream so that a seed reproduces a run.

use serde_json::{Map, Value};

/// SplitMix64: small, fast, and good enough to choose mutations with; no dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; 0 when `n` is 0.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Bytes that parsers treat specially in the formats here (JSON, selectors, protobuf
/// varints, HTTP headers).
const INTERESTING: &[u8] = &[
    0, 1, 2, 0x7f, 0x80, 0xff, b'0', b'9', b'"', b'{', b'}', b'[', b']', b',', b':', b'\\', b'/',
    b' ', b'\n', b'\r', b'=', b'-', b'.', b'!', b'(', b')',
];

/// Recent inputs kept as bases for further mutation, so that mutations compound.
const POOL: usize = 512;

pub(crate) struct Mutator {
    rng: Rng,
    seeds: Vec<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    dictionary: &'static [&'static str],
    numbers: &'static [&'static str],
    max_len: usize,
    /// The input is JSON documents separated by NUL bytes: half the mutations then
    /// change the documents' trees, so that they stay JSON (byte mutations of JSON
    /// rarely do, and then only reach the JSON parser).
    json: bool,
}

impl Mutator {
    pub(crate) fn new(
        rng: Rng,
        seeds: Vec<Vec<u8>>,
        dictionary: &'static [&'static str],
        numbers: &'static [&'static str],
        max_len: usize,
        json: bool,
    ) -> Mutator {
        Mutator {
            rng,
            seeds,
            pool: Vec::new(),
            dictionary,
            numbers,
            max_len,
            json,
        }
    }

    /// The next input to try.
    pub(crate) fn next_input(&mut self) -> Vec<u8> {
        if self.rng.chance(64) || (self.seeds.is_empty() && self.pool.is_empty()) {
            let len = self.rng.below(self.max_len.min(64) + 1);
            return (0..len).map(|_| self.rng.next() as u8).collect();
        }
        let from_pool = !self.pool.is_empty() && self.rng.chance(2);
        let mut input = if from_pool {
            self.pool[self.rng.below(self.pool.len())].clone()
        } else if self.seeds.is_empty() {
            Vec::new()
        } else {
            self.seeds[self.rng.below(self.seeds.len())].clone()
        };
        let rounds = 1 + self.rng.below(4);
        let tree = self.json && self.rng.chance(2);
        for _ in 0..rounds {
            if !(tree && self.mutate_json(&mut input)) {
                self.mutate(&mut input);
            }
        }
        input.truncate(self.max_len);
        // Mutations of broken JSON mostly stay broken: only documents are bred from.
        let breeds = !self.json
            || input
                .split(|&b| b == 0)
                .all(|p| p.is_empty() || serde_json::from_slice::<Value>(p).is_ok());
        if breeds && self.rng.chance(4) {
            if self.pool.len() < POOL {
                self.pool.push(input.clone());
            } else {
                let slot = self.rng.below(POOL);
                self.pool[slot].clone_from(&input);
            }
        }
        input
    }

    fn token(&mut self) -> &'static [u8] {
        let use_number = self.dictionary.is_empty() || self.rng.chance(4);
        let list = if use_number {
            self.numbers
        } else {
            self.dictionary
        };
        list.get(self.rng.below(list.len()))
            .map_or(&[], |t| t.as_bytes())
    }

    /// Some other input, to splice from.
    fn other(&mut self) -> Vec<u8> {
        let total = self.seeds.len() + self.pool.len();
        let i = self.rng.below(total);
        match self.seeds.get(i) {
            Some(seed) => seed.clone(),
            None => self
                .pool
                .get(i - self.seeds.len())
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// Changes one node of one of the JSON documents in `input`; false if none parses.
    fn mutate_json(&mut self, input: &mut Vec<u8>) -> bool {
        let mut parts: Vec<Vec<u8>> = input.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
        let mut docs: Vec<(usize, Value)> = parts
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, serde_json::from_slice(p).ok()?)))
            .collect();
        if docs.is_empty() {
            return false;
        }
        let (which, mut doc) = docs.swap_remove(self.rng.below(docs.len()));
        let nodes = count(&doc);
        // A subtree to graft, from this document or another input's.
        let donor = {
            let other = self.other();
            let docs: Vec<Value> = other
                .split(|&b| b == 0)
                .filter_map(|p| serde_json::from_slice(p).ok())
                .collect();
            let source = match docs.len() {
                0 => &doc,
                n => &docs[self.rng.below(n)],
            };
            let at = self.rng.below(count(source));
            nth(source, at).cloned().unwrap_or(Value::Null)
        };
        let at = self.rng.below(nodes);
        let op = self.rng.below(8);
        let word = self.word();
        let number = self.numbers[self.rng.below(self.numbers.len())];
        let pick = self.rng.next() as usize;
        if let Some(node) = nth_mut(&mut doc, at) {
            match (op, node) {
                (0, node) => *node = donor,
                (1, Value::Object(map)) => {
                    map.insert(word, donor);
                }
                (1, Value::Array(items)) => {
                    let at = pick % (items.len() + 1);
                    items.insert(at, donor);
                }
                (2, Value::Object(map)) if !map.is_empty() => {
                    let key = map
                        .keys()
                        .nth(pick % map.len())
                        .cloned()
                        .unwrap_or_default();
                    map.remove(&key);
                }
                (2, Value::Array(items)) if !items.is_empty() => {
                    items.remove(pick % items.len());
                }
                (3, Value::Array(items)) if !items.is_empty() => {
                    let copy = items[pick % items.len()].clone();
                    items.push(copy);
                }
                (4, node) => *node = Value::String(word),
                (5, node) => *node = serde_json::from_str(number).unwrap_or(Value::Null),
                (6, node) => {
                    *node = [Value::Null, Value::Bool(true), Value::Object(Map::new())][pick % 3]
                        .clone()
                }
                (_, Value::Object(map)) => {
                    map.insert(word, Value::Null);
                }
                (_, node) => *node = Value::Array(vec![node.take()]),
            }
        }
        parts[which] = serde_json::to_vec(&doc).unwrap_or_default();
        *input = parts.join(&0u8);
        true
    }

    /// A dictionary word without JSON quotes, for keys and strings.
    fn word(&mut self) -> String {
        let token = String::from_utf8_lossy(self.token()).into_owned();
        token.trim_matches('"').to_string()
    }

    fn mutate(&mut self, input: &mut Vec<u8>) {
        let len = input.len();
        let pos = self.rng.below(len + 1);
        match self.rng.below(14) {
            // Flip one bit.
            0 if len > 0 => {
                let at = self.rng.below(len);
                input[at] ^= 1 << self.rng.below(8);
            }
            // A byte of special meaning.
            1 if len > 0 => {
                let at = self.rng.below(len);
                input[at] = INTERESTING[self.rng.below(INTERESTING.len())];
            }
            // A random byte.
            2 if len > 0 => {
                let at = self.rng.below(len);
                input[at] = self.rng.next() as u8;
            }
            // A small step up or down, for lengths and counts.
            3 if len > 0 => {
                let at = self.rng.below(len);
                let delta = 1 + self.rng.below(16) as u8;
                input[at] = if self.rng.chance(2) {
                    input[at].wrapping_add(delta)
                } else {
                    input[at].wrapping_sub(delta)
                };
            }
            // Cut a range.
            4 if len > 0 => {
                let at = self.rng.below(len);
                let n = 1 + self.rng.below((len - at).min(32));
                input.drain(at..at + n);
            }
            // Insert random bytes.
            5 => {
                let n = 1 + self.rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.next() as u8).collect();
                input.splice(pos..pos, bytes);
            }
            // Repeat a range of the input elsewhere in it.
            6 if len > 0 => {
                let at = self.rng.below(len);
                let n = 1 + self.rng.below((len - at).min(64));
                let piece = input[at..at + n].to_vec();
                input.splice(pos..pos, piece);
            }
            // Insert a token.
            7 | 8 => {
                let token = self.token();
                input.splice(pos..pos, token.iter().copied());
            }
            // Overwrite with a token.
            9 => {
                let token = self.token();
                let end = (pos + token.len()).min(len);
                input.splice(pos..end, token.iter().copied());
            }
            // Insert a piece of another input.
            10 => {
                let other = self.other();
                if !other.is_empty() {
                    let at = self.rng.below(other.len());
                    let n = 1 + self.rng.below((other.len() - at).min(128));
                    input.splice(pos..pos, other[at..at + n].iter().copied());
                }
            }
            // This input's start, another's end.
            11 => {
                let other = self.other();
                let at = self.rng.below(other.len() + 1);
                input.truncate(pos);
                input.extend_from_slice(&other[at..]);
            }
            // A number written in the input becomes an edge value (`0-1023` to
            // `0-18446744073709551615`), as lengths, ports and ranges are in text formats.
            12 if input.iter().any(u8::is_ascii_digit) => {
                let digits: Vec<usize> = (0..len).filter(|&i| input[i].is_ascii_digit()).collect();
                let mut start = digits[self.rng.below(digits.len())];
                while start > 0 && input[start - 1].is_ascii_digit() {
                    start -= 1;
                }
                let mut end = start;
                while end < len && input[end].is_ascii_digit() {
                    end += 1;
                }
                let number = self.numbers[self.rng.below(self.numbers.len())];
                input.splice(start..end, number.bytes());
            }
            // Swap two bytes.
            _ if len > 1 => {
                let (a, b) = (self.rng.below(len), self.rng.below(len));
                input.swap(a, b);
            }
            _ => {
                let token = self.token();
                input.splice(pos..pos, token.iter().copied());
            }
        }
    }
}

/// The number of nodes of a JSON tree.
fn count(v: &Value) -> usize {
    1 + match v {
        Value::Object(map) => map.values().map(count).sum(),
        Value::Array(items) => items.iter().map(count).sum(),
        _ => 0,
    }
}

/// The `n`th node in pre-order.
fn nth(v: &Value, n: usize) -> Option<&Value> {
    if n == 0 {
        return Some(v);
    }
    let mut n = n - 1;
    let children: Box<dyn Iterator<Item = &Value>> = match v {
        Value::Object(map) => Box::new(map.values()),
        Value::Array(items) => Box::new(items.iter()),
        _ => return None,
    };
    for child in children {
        let size = count(child);
        if n < size {
            return nth(child, n);
        }
        n -= size;
    }
    None
}

fn nth_mut(v: &mut Value, n: usize) -> Option<&mut Value> {
    if n == 0 {
        return Some(v);
    }
    let mut n = n - 1;
    let children: Box<dyn Iterator<Item = &mut Value>> = match v {
        Value::Object(map) => Box::new(map.values_mut()),
        Value::Array(items) => Box::new(items.iter_mut()),
        _ => return None,
    };
    for child in children {
        let size = count(child);
        if n < size {
            return nth_mut(child, n);
        }
        n -= size;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_inputs() {
        let make = || {
            let mut m = Mutator::new(
                Rng::new(7),
                vec![b"app=web".to_vec(), b"tier in (a,b)".to_vec()],
                &["in", "!="],
                &["0"],
                64,
                false,
            );
            (0..200).map(|_| m.next_input()).collect::<Vec<_>>()
        };
        let inputs = make();
        assert_eq!(inputs, make());
        assert!(inputs.iter().all(|i| i.len() <= 64));
        // Mutations, not copies of the seeds.
        assert!(inputs.iter().filter(|i| i.as_slice() != b"app=web").count() > 150);
    }

    #[test]
    fn json_mutations_keep_the_documents_json() {
        let mut m = Mutator::new(
            Rng::new(3),
            vec![b"v1/Pod\0{\"a\":[1,{\"b\":null}]}\0{\"c\":\"d\"}".to_vec()],
            &["\"$patch\""],
            &["0"],
            4096,
            true,
        );
        let mut documents = 0;
        for _ in 0..500 {
            let input = m.next_input();
            let parts: Vec<&[u8]> = input.split(|&b| b == 0).collect();
            if parts.len() == 3
                && parts[1..]
                    .iter()
                    .all(|p| serde_json::from_slice::<Value>(p).is_ok())
            {
                documents += 1;
            }
        }
        assert!(
            documents > 150,
            "only {documents} of 500 inputs are still JSON"
        );
    }
}
