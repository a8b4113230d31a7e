/* ==========================================================================
 * main
 *
 * Owns nothing.  Internal roles are chosen by a leading flag: --daemon and
 * --zygote are started by this binary itself, never by users.
 * ========================================================================== */

#ifdef PF_NO_MAIN
#define PF_MAIN pf_main   /* linked into a test program, which has its own main */
#else
#define PF_MAIN main
#endif

int PF_MAIN(int argc, char **argv)
{
    util_find_exe(argv[0]);
    util_find_build();
    if (argc >= 5 && !strcmp(argv[1], "--daemon")) {
        double ttl = atof(argv[3]);
        return dmn_main(argv[2], ttl > 0 ? ttl : 600, atoi(argv[4]));
    }
    if (argc >= 5 && !strcmp(argv[1], "--zygote") && !strcmp(argv[4], "--"))
        return zyg_main(atoi(argv[2]), argv[3], argc - 5, argv + 5);
    return cli_main(argc, argv);
}
