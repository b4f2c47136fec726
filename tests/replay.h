/* replay.h -- the -DFUZZ_REPLAY main() shared by tests/fuzz_*.c.
 *
 * Without libFuzzer, a target is a plain program that runs every file named
 * on its command line (or every regular file in a directory named there)
 * through LLVMFuzzerTestOneInput() once, so `make fuzz-replay` replays the
 * corpus with any compiler (SQLite's fuzztest, mongoose's fuzz2). Each input
 * is placed at the very end of a mapping followed by a PROT_NONE page, so an
 * over-read crashes here too, sanitizer or not. A crash or a failed check
 * names the input on stderr before the process dies. Exit: 0 all inputs
 * ran, 1 a file could not be read. */

#ifdef FUZZ_REPLAY

#include <dirent.h>
#include <sys/mman.h>

static const char *replay_path;   /* input being run, for the crash note */

static void replay_on_signal(int sig) {
    static const char msg[] = "fuzz-replay: crashed on input ";
    ssize_t w = write(2, msg, sizeof msg - 1);
    if (replay_path) w = write(2, replay_path, strlen(replay_path));
    w = write(2, "\n", 1);
    (void)w;
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Run data[0..n) from the end of a guarded mapping. Returns 0 or -1. */
static int replay_guarded(const char *data, size_t n) {
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t body = n ? (n + pg - 1) / pg * pg : pg;
    int fd = open("/dev/zero", O_RDWR);
    if (fd < 0) return -1;
    char *m = mmap(NULL, body + pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return -1;
    if (mprotect(m + body, pg, PROT_NONE)) {
        munmap(m, body + pg);
        return -1;
    }
    if (n) memcpy(m + body - n, data, n);
    LLVMFuzzerTestOneInput((const uint8_t *)(m + body - n), n);
    munmap(m, body + pg);
    return 0;
}

/* Read one file whole and run it. Returns 0 or -1. */
static int replay_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz-replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    Buf b = { 0 };
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) buf_add(&b, chunk, got);
    int rc = ferror(f) ? -1 : 0;
    fclose(f);
    if (rc == 0) {
        replay_path = path;
        rc = replay_guarded(buf_cstr(&b), b.len);
        replay_path = NULL;
    }
    if (rc) fprintf(stderr, "fuzz-replay: %s: cannot run\n", path);
    buf_free(&b);
    return rc;
}

int main(int argc, char **argv) {
    int ran = 0, failed = 0;
    signal(SIGSEGV, replay_on_signal);
    signal(SIGBUS, replay_on_signal);
    signal(SIGABRT, replay_on_signal);
    signal(SIGFPE, replay_on_signal);
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st)) {
            fprintf(stderr, "fuzz-replay: %s: %s\n", argv[i], strerror(errno));
            failed++;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            if (replay_file(argv[i])) failed++;
            else ran++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        if (!d) {
            fprintf(stderr, "fuzz-replay: %s: %s\n", argv[i], strerror(errno));
            failed++;
            continue;
        }
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            char path[4096];
            if (e->d_name[0] == '.') continue;    /* ".", "..", hidden */
            snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
            if (stat(path, &st) || !S_ISREG(st.st_mode)) continue;
            if (replay_file(path)) failed++;
            else ran++;
        }
        closedir(d);
    }
    printf("%s: replayed %d inputs, %d unreadable\n", argv[0], ran, failed);
    return failed ? 1 : 0;
}

#endif /* FUZZ_REPLAY */
