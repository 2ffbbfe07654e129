"""Files: audio reading and writing, Kaldi scp files, atomic writes that follow the umask; the
true/false option parser that every command shares."""
