/*
 * DedupGc - a JVM workload for libdedup's suite tests (tests/suite/jvm.sh).
 *
 *   java [-XX:+UseG1GC | -XX:+UseParallelGC | -XX:+UseSerialGC] DedupGc THREADS MIB
 *
 * Phase 1: THREADS threads each allocate MIB/THREADS MiB of byte and long
 * arrays: three in four are duplicates (every byte the same, one of eight
 * values, zero among them: their inner pages are identical whatever the
 * objects' alignment), one in four unique (seeded random bytes). Every array
 * gets a CRC32 when filled. Then it prints "ready" on stderr and waits for a
 * line (or EOF) on stdin: the test lets libdedup merge the heap meanwhile.
 *
 * Phase 2: every thread checks all its arrays, writes into a quarter of them
 * (into merged pages: copy-on-write), replaces another quarter, churns
 * garbage (young collections move the survivors), takes NullPointerExceptions
 * in a hot loop (compiled code catches them through SIGSEGV, the JVM's
 * implicit null checks), and one System.gc() (a full, compacting collection
 * that moves every merged object) happens in the middle. Then every array is
 * checked again, by another thread than its owner.
 *
 * stdout is a deterministic function of THREADS and MIB: the test compares
 * it with the run without libdedup. Exit 0 when every check passed, 1 if any
 * array ever read back different from what was written.
 */
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.atomic.AtomicLong;
import java.util.zip.CRC32;

public final class DedupGc {
    static final int ARRAY = 64 * 1024;            /* bytes per array */
    static final AtomicLong errors = new AtomicLong();
    static final AtomicLong checked = new AtomicLong();
    static volatile Object sink;

    /* One array with the checksum it must have. */
    static final class Item {
        byte[] b;          /* either b or l */
        long[] l;
        long crc;
    }

    static long crc(Item it) {
        CRC32 c = new CRC32();
        if (it.b != null) {
            c.update(it.b);
        } else {
            for (long v : it.l) {
                for (int k = 0; k < 8; k++)
                    c.update((int) (v >>> (8 * k)) & 0xff);
            }
        }
        return c.getValue();
    }

    static Item make(Random r, boolean dup) {
        Item it = new Item();
        if (r.nextInt(3) == 0) {
            it.l = new long[ARRAY / 8];
            if (dup) {
                long v = (r.nextInt(8) * 0x0101010101010101L);
                java.util.Arrays.fill(it.l, v);
            } else {
                for (int i = 0; i < it.l.length; i++)
                    it.l[i] = r.nextLong();
            }
        } else {
            it.b = new byte[ARRAY];
            if (dup)
                java.util.Arrays.fill(it.b, (byte) r.nextInt(8));
            else
                r.nextBytes(it.b);
        }
        it.crc = crc(it);
        return it;
    }

    static void check(Item it, String where) {
        checked.incrementAndGet();
        long c = crc(it);
        if (c != it.crc) {
            long n = errors.incrementAndGet();
            if (n <= 10)
                System.err.printf("DedupGc: %s: checksum %x, expected %x%n", where, c, it.crc);
        }
    }

    /* Hot loop whose null receiver the JIT turns into a SIGSEGV + handler. */
    static int npeLoop(Item[] a) {
        int caught = 0;
        for (int i = 0; i < a.length; i++) {
            try {
                caught += a[i].b.length > 0 ? 0 : 1;
            } catch (NullPointerException e) {
                caught++;
            }
        }
        return caught;
    }

    public static void main(String[] args) throws Exception {
        final int threads = Integer.parseInt(args[0]);
        final int mib = Integer.parseInt(args[1]);
        final int per = (int) ((long) mib * 1024 * 1024 / ARRAY / threads);
        final List<List<Item>> all = new ArrayList<>();
        for (int t = 0; t < threads; t++)
            all.add(new ArrayList<>());
        final long[] result = new long[threads];
        final CyclicBarrier filled = new CyclicBarrier(threads + 1);
        final CyclicBarrier go = new CyclicBarrier(threads + 1);
        final CyclicBarrier full = new CyclicBarrier(threads + 1);
        final CyclicBarrier done = new CyclicBarrier(threads + 1);
        Thread[] ts = new Thread[threads];
        for (int t = 0; t < threads; t++) {
            final int id = t;
            ts[t] = new Thread(() -> {
                try {
                    Random r = new Random(1000 + id);
                    List<Item> mine = all.get(id);
                    for (int i = 0; i < per; i++)
                        mine.add(make(r, r.nextInt(4) != 0));
                    filled.await();
                    go.await();
                    /* phase 2 */
                    for (int i = 0; i < mine.size(); i++)
                        check(mine.get(i), "thread " + id + " item " + i + " after the wait");
                    for (int i = 0; i < mine.size(); i += 4) {
                        Item it = mine.get(i);
                        int pos = r.nextInt(ARRAY / 8);
                        if (it.b != null)
                            it.b[pos * 8] ^= (byte) (1 + r.nextInt(255));
                        else
                            it.l[pos] ^= 1L + r.nextInt(1 << 30);
                        it.crc = crc(it);
                    }
                    for (int i = 1; i < mine.size(); i += 4)
                        mine.set(i, make(r, r.nextInt(2) == 0));
                    Item[] holes = new Item[4096];
                    for (int i = 0; i < holes.length; i += 2)
                        holes[i] = mine.get(i % mine.size());
                    int npe = 0;
                    for (int round = 0; round < 200; round++) {
                        sink = new byte[1 + r.nextInt(ARRAY)];     /* churn */
                        npe += npeLoop(holes);
                        if (round == 100) {
                            full.await();       /* main thread: System.gc() */
                            full.await();
                        }
                    }
                    long x = npe;
                    for (Item it : mine)
                        x = x * 31 + it.crc;
                    result[id] = x;
                    done.await();
                } catch (Exception e) {
                    e.printStackTrace();
                    errors.incrementAndGet();
                    System.exit(1);
                }
            }, "worker-" + t);
            ts[t].start();
        }
        filled.await();
        System.err.println("ready");
        new BufferedReader(new InputStreamReader(System.in)).readLine();  /* a line or EOF */
        go.await();
        full.await();
        System.gc();
        full.await();
        done.await();
        for (Thread t : ts)
            t.join();
        /* every array checked again, by another thread than its owner */
        Thread[] vs = new Thread[threads];
        for (int t = 0; t < threads; t++) {
            final List<Item> theirs = all.get((t + 1) % threads);
            final int owner = (t + 1) % threads;
            vs[t] = new Thread(() -> {
                for (int i = 0; i < theirs.size(); i++)
                    check(theirs.get(i), "final check, thread " + owner + " item " + i);
            });
            vs[t].start();
        }
        for (Thread t : vs)
            t.join();
        System.out.printf("threads %d, %d arrays of %d bytes each%n", threads, per, ARRAY);
        for (int t = 0; t < threads; t++)
            System.out.printf("thread %d: %016x%n", t, result[t]);
        System.out.printf("checked %d arrays, %d errors%n", checked.get(), errors.get());
        System.exit(errors.get() == 0 ? 0 : 1);
    }
}
