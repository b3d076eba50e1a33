//! An in-memory [`Backend`] for unit tests and the fuzz target of the state machine.

use std::collections::BTreeMap;

use super::{Backend, BackendMut, Revision, StorageError};
use crate::pb::storepb::Record;

#[derive(Debug, Default, Clone)]
pub struct MemBackend {
    pub records: BTreeMap<Revision, Record>,
    pub leases: BTreeMap<i64, i64>,
}

impl Backend for MemBackend {
    fn get(&self, rev: Revision) -> Result<Option<Record>, StorageError> {
        Ok(self.records.get(&rev).cloned())
    }
}

impl BackendMut for MemBackend {
    fn put(&mut self, rev: Revision, record: Record) -> Result<(), StorageError> {
        self.records.insert(rev, record);
        Ok(())
    }

    fn remove(&mut self, rev: Revision) -> Result<(), StorageError> {
        self.records.remove(&rev);
        Ok(())
    }

    fn put_lease(&mut self, id: i64, ttl: i64) -> Result<(), StorageError> {
        self.leases.insert(id, ttl);
        Ok(())
    }

    fn remove_lease(&mut self, id: i64) -> Result<(), StorageError> {
        self.leases.remove(&id);
        Ok(())
    }
}
