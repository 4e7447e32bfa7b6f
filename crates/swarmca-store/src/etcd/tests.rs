//! EtcdStore only: etcd's revisions as versions, watches across breaks and compactions, etcd
//! restarts and hangs, mutual TLS, fencing, election, and a 3-member cluster losing its leader.
//! The behaviour it shares with MemStore is tested by the suite in `crate::tests`.
