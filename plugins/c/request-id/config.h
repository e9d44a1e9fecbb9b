// The request-id plugin's config: parsing and checks, independent of the
// bindings.
#ifndef REQUEST_ID_CONFIG_H
#define REQUEST_ID_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

// Longest header name accepted in `header`.
#define HEADER_NAME_MAX 64
// Longest request id accepted or produced (the host's own limit).
#define REQUEST_ID_MAX 128

struct config {
    // The lower-case header name carrying the id.
    char header[HEADER_NAME_MAX + 1];
};

// Parses the config JSON (`{}` or `{"header": "x-request-id"}`). On error
// writes a human message (NUL-terminated, at most `error_size` bytes) and
// returns false.
bool config_parse(const char *json, size_t len, struct config *config, char *error,
                  size_t error_size);

// Whether `value` may be used as a request id as it is: 1 to 128 bytes of
// letters, digits and `-_.:`.
bool request_id_is_sane(const char *value, size_t len);

#endif
