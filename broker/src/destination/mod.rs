//! Where messages go once a session has accepted them.
//!
//! A session talks to the [`router::Router`] of its virtual host ([`vhost`]), which maps a
//! destination name to a [`topic::Topic`] (fan-out to every subscriber) or a
//! [`queue::QueueHandle`] (one actor per queue, each message to one consumer). Both deliver into
//! a connection's bounded [`outbox::Outbox`], which is all a connection task reads from. A queue whose consumers fall behind slows its
//! publishers ([`flow`]). Messages due later wait in a [`delay`] heap of their queue, or of the
//! virtual host for topics.

pub mod delay;
pub mod flow;
pub mod outbox;
pub mod queue;
pub mod retention;
pub mod router;
pub mod selector;
pub mod topic;
pub mod vhost;
