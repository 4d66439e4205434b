#include <librist/librist.h>
