//! Header escaping per version. (Implementation in progress.)
