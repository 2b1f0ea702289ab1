//! Transaction evaluation shared by the embedded backends: compares against the current values,
//! then the writes, events and answer of the transaction at the next revision.

use crate::{Event, EventKind, KeyValue, OpResult, Result, StoreError, Txn, TxnOp, TxnResponse};
use std::collections::HashSet;

/// A transaction's outcome before it is made durable.
pub(crate) struct Evaluated {
    pub response: TxnResponse,
    /// What to store (`Some`) or remove (`None`) per key; empty when nothing changes.
    pub writes: Vec<(String, Option<KeyValue>)>,
    pub events: Vec<Event>,
}

/// Evaluates `txn` on top of revision `current`; `lookup` reads a key's current value.
pub(crate) fn evaluate(
    txn: Txn,
    current: i64,
    mut lookup: impl FnMut(&str) -> Result<Option<KeyValue>>,
) -> Result<Evaluated> {
    let mut seen = HashSet::with_capacity(txn.ops.len());
    for op in &txn.ops {
        if op.key().is_empty() {
            return Err(StoreError::InvalidTxn("empty key".into()));
        }
        if !seen.insert(op.key()) {
            return Err(StoreError::InvalidTxn(format!(
                "duplicate key {} in one transaction",
                op.key()
            )));
        }
    }
    let mut values = Vec::with_capacity(txn.compare.len());
    let mut ok = true;
    for c in &txn.compare {
        let v = lookup(&c.key)?;
        ok &= c.holds(v.as_ref().map_or(0, |kv| kv.mod_revision));
        values.push(v);
    }
    if !ok {
        return Ok(Evaluated {
            response: TxnResponse {
                succeeded: false,
                revision: current,
                results: Vec::new(),
                current: values,
            },
            writes: Vec::new(),
            events: Vec::new(),
        });
    }
    let rev = current + 1;
    let mut results = Vec::with_capacity(txn.ops.len());
    let mut writes = Vec::with_capacity(txn.ops.len());
    let mut events = Vec::with_capacity(txn.ops.len());
    for op in txn.ops {
        match op {
            TxnOp::Put { key, value } => {
                let prev = lookup(&key)?;
                let kv = KeyValue {
                    create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                    mod_revision: rev,
                    key,
                    value,
                };
                results.push(OpResult::Put(kv.clone()));
                writes.push((kv.key.clone(), Some(kv.clone())));
                events.push(Event {
                    kind: EventKind::Put,
                    kv,
                    prev,
                });
            }
            TxnOp::Delete { key } => {
                let prev = lookup(&key)?;
                if let Some(p) = &prev {
                    let mut gone = p.clone();
                    gone.mod_revision = rev;
                    events.push(Event {
                        kind: EventKind::Delete,
                        kv: gone,
                        prev: Some(p.clone()),
                    });
                    writes.push((key, None));
                }
                results.push(OpResult::Delete(prev));
            }
        }
    }
    let revision = if writes.is_empty() { current } else { rev };
    Ok(Evaluated {
        response: TxnResponse {
            succeeded: true,
            revision,
            results,
            current: Vec::new(),
        },
        writes,
        events,
    })
}
