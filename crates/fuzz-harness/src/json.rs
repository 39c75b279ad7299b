//! JSON-aware mutations: a node of a known-good document (chosen by its place in a depth-first
//! walk) set to an interesting value, removed, or repeated many times. Used on config.json,
//! tokenizer.json, safetensors headers, checkpoint metadata and our JSONL records.

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

/// One JSON mutation.
#[derive(Debug, Clone)]
pub enum JsonMutation {
    /// Replaces the node with a value.
    Set(Index, Value),
    /// Removes the node from its object or array (the root is left alone).
    Remove(Index),
    /// Repeats the node's last element (array), text (string) or last member (object, under
    /// new keys) this many more times.
    Grow(Index, usize),
    /// Replaces the node with a copy of another node of the document.
    Graft(Index, Index),
}

/// Values that break readers: zero, negative and huge numbers, fractions, values beyond f64's
/// range (which parse as infinity), wrong types, empty and nested containers.
pub fn interesting() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        6 => prop::sample::select(vec![
            json!(0),
            json!(1),
            json!(2),
            json!(3),
            json!(-1),
            json!(7),
            json!(64),
            json!(320),
            json!(65536),
            json!(u32::MAX),
            json!(1u64 << 32),
            json!(1_000_000_000_000u64),
            json!(i64::MAX),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(0.5),
            json!(-0.0),
            json!(1e-300),
            json!(1e300),
            json!(f64::MAX),
            json!(""),
            json!("x"),
            json!("llama"),
            json!("gpt2"),
            json!("F32"),
            json!("F16"),
            json!("BF16"),
            json!("I64"),
            json!("U8"),
            json!(null),
            json!(true),
            json!(false),
            json!([]),
            json!({}),
            json!([0]),
            json!([u64::MAX]),
            json!([0, 0]),
            json!([1, 0]),
            json!([0, u64::MAX]),
            json!([[0]]),
        ]),
        1 => any::<i64>().prop_map(|x| json!(x)),
        1 => any::<f64>().prop_map(|x| json!(x)),
        1 => "[a-z_.]{0,12}".prop_map(|s| json!(s)),
    ]
}

/// One mutation.
pub fn json_mutation() -> impl Strategy<Value = JsonMutation> {
    let times = prop::sample::select(vec![1usize, 2, 10, 1000]);
    prop_oneof![
        6 => (any::<Index>(), interesting()).prop_map(|(n, v)| JsonMutation::Set(n, v)),
        2 => any::<Index>().prop_map(JsonMutation::Remove),
        1 => (any::<Index>(), times).prop_map(|(n, t)| JsonMutation::Grow(n, t)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| JsonMutation::Graft(a, b)),
    ]
}

/// Between one and `max` mutations.
pub fn json_mutations(max: usize) -> impl Strategy<Value = Vec<JsonMutation>> {
    prop::collection::vec(json_mutation(), 1..=max.max(1))
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    At(usize),
}

/// Every node's path, depth first (the root first, as the empty path).
fn paths(v: &Value) -> Vec<Vec<Step>> {
    fn walk(v: &Value, here: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
        out.push(here.clone());
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    here.push(Step::At(i));
                    walk(item, here, out);
                    here.pop();
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    here.push(Step::Key(k.clone()));
                    walk(item, here, out);
                    here.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn node_mut<'a>(mut v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    for step in path {
        v = match step {
            Step::Key(k) => v.get_mut(k)?,
            Step::At(i) => v.get_mut(*i)?,
        };
    }
    Some(v)
}

fn node<'a>(mut v: &'a Value, path: &[Step]) -> Option<&'a Value> {
    for step in path {
        v = match step {
            Step::Key(k) => v.get(k)?,
            Step::At(i) => v.get(*i)?,
        };
    }
    Some(v)
}

/// The most bytes one `Grow` may add to a document.
const GROW_LIMIT: usize = 1 << 20;

/// Applies `mutations` to `doc` in order.
pub fn apply(doc: &mut Value, mutations: &[JsonMutation]) {
    for m in mutations {
        let all = paths(doc);
        let pick = |i: &Index| all[i.index(all.len())].clone();
        match m {
            JsonMutation::Set(n, value) => {
                if let Some(x) = node_mut(doc, &pick(n)) {
                    *x = value.clone();
                }
            }
            JsonMutation::Remove(n) => {
                let mut path = pick(n);
                let Some(last) = path.pop() else { continue };
                match (node_mut(doc, &path), last) {
                    (Some(Value::Object(map)), Step::Key(k)) => {
                        map.remove(&k);
                    }
                    (Some(Value::Array(items)), Step::At(i)) if i < items.len() => {
                        items.remove(i);
                    }
                    _ => {}
                }
            }
            // Growth is capped (GROW_LIMIT bytes added): repeated growth of one node would
            // otherwise make the harness itself allocate gigabytes.
            JsonMutation::Grow(n, times) => match node_mut(doc, &pick(n)) {
                Some(Value::Array(items)) => {
                    if let Some(last) = items.last().cloned()
                        && last.to_string().len().saturating_mul(*times) <= GROW_LIMIT
                    {
                        items.extend(std::iter::repeat_n(last, *times));
                    }
                }
                Some(Value::String(s)) if s.len().saturating_mul(*times) <= GROW_LIMIT => {
                    *s = s.repeat(times + 1)
                }
                Some(Value::Object(map)) => {
                    if let Some((k, v)) =
                        map.iter().next_back().map(|(k, v)| (k.clone(), v.clone()))
                        && v.to_string().len().saturating_mul(*times) <= GROW_LIMIT
                    {
                        for i in 0..*times {
                            map.insert(format!("{k}.{i}"), v.clone());
                        }
                    }
                }
                _ => {}
            },
            JsonMutation::Graft(to, from) => {
                let Some(copy) = node(doc, &pick(from)).cloned() else {
                    continue;
                };
                if let Some(x) = node_mut(doc, &pick(to)) {
                    *x = copy;
                }
            }
        }
    }
}
