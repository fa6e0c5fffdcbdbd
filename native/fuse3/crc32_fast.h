/* CRC-32 (zlib's: ISO-HDLC, reflected 0xEDB88320), by carry-less multiplication where the CPU has it. */
#ifndef VDISKFS_CRC32_FAST_H
#define VDISKFS_CRC32_FAST_H
#include <stddef.h>
#include <stdint.h>
/* The same value as zlib's crc32(crc, buf, len). */
uint32_t vd_crc32(uint32_t crc, const unsigned char *buf, size_t len);
#endif
