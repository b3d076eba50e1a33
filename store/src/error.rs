//! The errors a client can see, each with etcd's gRPC code and exact message so `etcdctl` and
//! client libraries recognise them (they match on the message text).

use tonic::{Code, Status};

/// A request-level error that etcd also returns, with etcd's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// Input etcd would not reject explicitly but that has no meaning (an unknown enum value).
    #[error("etcdserver: {0}")]
    InvalidArgument(String),
    /// A failure inside this member (disk, Raft); the message says what.
    #[error("etcdserver: {0}")]
    Internal(String),
}

impl EtcdError {
    /// The gRPC status code etcd uses for this error.
    pub fn code(&self) -> Code {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | InvalidSortOption | RequestTooLarge | MemberBadUrls | InvalidArgument(_) => {
                Code::InvalidArgument
            }
            Compacted | FutureRev | LeaseTtlTooLarge => Code::OutOfRange,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExist | PeerUrlExist | MemberNotLearner | NotLeader | BadLeaderTransferee => {
                Code::FailedPrecondition
            }
            NoLeader | Stopped | Timeout => Code::Unavailable,
            NoSpace => Code::ResourceExhausted,
            Internal(_) => Code::Internal,
        }
    }

    /// Rebuilds an error from its code and message (how errors travel through the Raft log).
    pub fn from_parts(code: i32, message: &str) -> Self {
        use EtcdError::*;
        let known = [
            EmptyKey,
            KeyNotFound,
            ValueProvided,
            LeaseProvided,
            TooManyOps,
            DuplicateKey,
            Compacted,
            FutureRev,
            NoSpace,
            InvalidSortOption,
            LeaseNotFound,
            LeaseExist,
            LeaseTtlTooLarge,
            RequestTooLarge,
            MemberNotFound,
            PeerUrlExist,
            MemberBadUrls,
            MemberNotLearner,
            NoLeader,
            NotLeader,
            Stopped,
            Timeout,
            BadLeaderTransferee,
        ];
        if let Some(e) = known.into_iter().find(|e| e.to_string() == message) {
            return e;
        }
        let detail = message
            .strip_prefix("etcdserver: ")
            .unwrap_or(message)
            .to_string();
        if code == Code::InvalidArgument as i32 {
            InvalidArgument(detail)
        } else {
            Internal(detail)
        }
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_match_etcd() {
        let cases = [
            (
                EtcdError::Compacted,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                EtcdError::FutureRev,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                EtcdError::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                EtcdError::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                EtcdError::LeaseNotFound,
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                EtcdError::NoLeader,
                Code::Unavailable,
                "etcdserver: no leader",
            ),
        ];
        for (err, code, msg) in cases {
            let status = Status::from(err.clone());
            assert_eq!(status.code(), code, "{err:?}");
            assert_eq!(status.message(), msg, "{err:?}");
            assert_eq!(EtcdError::from_parts(code as i32, msg), err);
        }
    }

    #[test]
    fn unknown_messages_round_trip() {
        let e = EtcdError::InvalidArgument("unknown compare target 9".into());
        let back = EtcdError::from_parts(e.code() as i32, &e.to_string());
        assert_eq!(back, e);
    }
}
