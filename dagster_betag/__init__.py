"""BETag: behavior-enhanced item tags, as a warehouse-native feature pipeline."""
