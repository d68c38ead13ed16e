# The paths an overlay workspace's export must look at, so git need not
# stat every file of the repo (minutes under emulation for a large one).
# Run by the export script with perl-base alone (no modules but strict),
# in the repo, with GIT_INDEX_FILE set to the export's scratch index.
#
#   perl changed.pl WS OUT
#
# WS is the workspace base (lower/ is the image: repo/ and banger/changed,
# upper/ the overlay's upper directory, mounted with lower/repo at the
# current directory); OUT the file to write the paths to, NUL-separated.
# Exit 0: OUT holds every path whose index entry may need an update, and
# OUT.dirs the directories whose own entry must go (their number goes to
# stderr); exit 2: the changes cannot be told apart cheaply
# (too many, another mount, an overlay feature it does not follow) and the
# caller must scan the whole tree.
#
# A path outside OUT is one whose file is the image's (no entry for it in
# upper/), that the host's git saw clean when it packed (not in
# banger/changed), and whose entry in the guest's index is the one the
# host shipped: its entry is right as it stands.
use strict;
use Config;

my ($ws, $out) = @ARGV;
my $upper = "$ws/upper";
my $lower = "$ws/lower/repo";
# Past these, a scan of every file costs less (paths are updated one by
# one; directories are pathspecs that git matches against every entry).
my $limit = 20000;
my $dir_limit = 1000;
my %paths;    # path => 1: files and entries to update
my %unsure;   # paths that may be untracked: the ones check-ignore must see
my @prefixes; # directories whose index entries (all of them) must be looked at
my @fresh;    # directories in upper/ alone: their untracked files

sub fallback { print STDERR $_[0] // 'cannot tell', "\n"; exit 2 }

# lgetxattr(2) by number: perl-base has no module for extended attributes.
my %lgetxattr = (x86_64 => 192, aarch64 => 9);
my $nr = $lgetxattr{(split(/-/, $Config::Config{archname}))[0]} // fallback('no lgetxattr for this architecture');

# The current directory must be the overlay of this workspace.
{
    my @here = stat('.') or fallback();
    my $ours = 0;
    open(my $mi, '<', '/proc/self/mountinfo') or fallback();
    while (my $line = <$mi>) {
        my ($pre, $post) = split(/ - /, $line, 2);
        next unless defined $post;
        my ($type, undef, $opts) = split(/ /, $post);
        my $point = (split(/ /, $pre))[4];
        next unless $type eq 'overlay' && defined $opts;
        my %o = map { /^([^=]+)=(.*)$/ ? ($1, $2) : ($_, '') } split(/,/, $opts);
        next unless ($o{upperdir} // '') eq $upper && ($o{lowerdir} // '') eq $lower;
        my @st = stat($point) or next;
        $ours = 1 if $st[0] == $here[0] && $st[1] == $here[1];
    }
    close($mi);
    fallback('not the overlay of this workspace') unless $ours;
}

sub git_out {
    my ($env, $input, @args) = @_;
    my $pid = open(my $fh, '-|');
    fallback() unless defined $pid;
    if (!$pid) {
        $ENV{$_} = $env->{$_} for keys %$env;
        open(STDERR, '>', '/dev/null');
        if (defined $input) {
            open(STDIN, '<', $input) or exit 127;
        }
        exec('git', @args) or exit 127;
    }
    local $/;
    my $text = <$fh>;
    close $fh;
    return ($?, defined $text ? $text : '');
}

sub git_list {
    my ($env, @args) = @_;
    my ($status, $text) = git_out($env, undef, @args);
    fallback("git @args failed") if $status != 0;
    return grep { $_ ne '' } split(/\0/, $text);
}

# The value of xattr NAME on PATH (not followed), or undef when it has none.
sub xattr {
    my ($path, $name) = @_;
    my ($p, $n, $buf) = ($path, $name, "\0" x 4096);
    my $len = syscall($nr, $p, $n, $buf, 4096);
    if ($len < 0) {
        # ENODATA: no such attribute; anything else: we cannot tell.
        fallback("reading $name: $!") unless $!{ENODATA};
        return undef;
    }
    return substr($buf, 0, $len);
}

sub is_dir { my @st = lstat($_[0]); return @st && -d _ }

sub add {
    my ($p) = @_;
    fallback('a repository inside the repository') if $p =~ m{/$};
    $paths{$p} = 1;
    fallback('too many changed paths') if keys(%paths) > $limit;
}

# Walks upper/: every entry that is not a directory is a changed path (a
# whiteout is a deletion); a directory the image lacks, or one that hides
# the image's (opaque), is new as a whole.
sub walk {
    my ($rel) = @_;
    my $dir = $rel eq '' ? $upper : "$upper/$rel";
    opendir(my $dh, $dir) or fallback();
    my @names = grep { $_ ne '.' && $_ ne '..' } readdir($dh);
    closedir($dh);
    for my $name (@names) {
        my $p = $rel eq '' ? $name : "$rel/$name";
        next if $p eq '.git';
        fallback('a repository inside the repository') if $name eq '.git';
        my @st = lstat("$upper/$p") or fallback();
        if (-d _) {
            # A renamed directory still shows the image's files: not followed.
            fallback('a renamed directory') if defined xattr("$upper/$p", 'trusted.overlay.redirect');
            my $opaque = (xattr("$upper/$p", 'trusted.overlay.opaque') // '') eq 'y';
            my @in_lower = lstat("$lower/$p");
            if ($opaque || !@in_lower || !-d _) {
                push @prefixes, $p if @in_lower;
                push @fresh, $p;
                fallback('too many changed directories') if @prefixes + @fresh > $dir_limit;
            } else {
                walk($p);
            }
        } else {
            add($p);
            # A file the image has, that the host saw clean (else it is in
            # banger/changed) and the guest's index did not touch (else it
            # is in the index's changes) is tracked: never ignored.
            my @in_lower = lstat("$lower/$p");
            $unsure{$p} = 1 if !@in_lower || -d _;
            push @prefixes, $p if @in_lower && -d _;
            fallback('too many changed directories') if @prefixes > $dir_limit;
        }
    }
}

walk('');

# What the host saw differ from its index when it packed: edits, deletions,
# untracked files.
{
    open(my $fh, '<', "$ws/lower/banger/changed") or fallback();
    local $/;
    my $text = <$fh>;
    close $fh;
    for (grep { $_ ne '' } split(/\0/, defined $text ? $text : '')) {
        add($_);
        $unsure{$_} = 1;
    }
}

# Entries the guest's index changed (git add, rm, commit, reset in the
# guest): its index against the tree of the one the host shipped.
my $git_changed = lstat("$upper/.git/index") ? 1
    : !lstat("$upper/.git") ? 0
    : !-d _ ? 1
    : (xattr("$upper/.git", 'trusted.overlay.opaque') // '') eq 'y';
if ($git_changed) {
    my $shipped = "$out.shipped";
    unlink($shipped);
    if (-e "$lower/.git/index") {
        open(my $from, '<', "$lower/.git/index") or fallback();
        open(my $to, '>', $shipped) or fallback();
        local $/;
        my $bytes = <$from>;
        print $to $bytes;
        close($to) or fallback();
    }
    # write-tree may store the trees it computes in the copy, never in the image.
    my ($status, $tree) = git_out({ GIT_INDEX_FILE => $shipped }, undef, 'write-tree');
    fallback('the shipped index has conflicts') if $status != 0;
    chomp $tree;
    for (git_list({}, 'diff-index', '--cached', '--name-only', '-z', '--no-renames', $tree)) {
        add($_);
        $unsure{$_} = 1;
    }
}

my %literal = (GIT_LITERAL_PATHSPECS => '1');
# Every entry under a directory deleted or replaced in the guest.
add($_) for @prefixes ? git_list(\%literal, 'ls-files', '-z', '--cached', '--', @prefixes) : ();
# Untracked files in new directories, ignored ones left out as git add does.
add($_) for @fresh ? git_list(\%literal, 'ls-files', '-z', '--others', '--exclude-standard', '--', @fresh) : ();

# A path that is a directory now: only its own entry (a file it replaced)
# goes, by --force-remove; what it holds is listed path by path. A
# submodule's directory is left to a scan.
my (@update, @dirs);
for my $p (sort keys %paths) {
    if (is_dir($p)) {
        fallback('a submodule changed') if lstat("$p/.git");
        push @dirs, $p;
    } else {
        push @update, $p;
    }
}

# An untracked, ignored path is not added (tracked ones never count as
# ignored). check-ignore answers for every path it is given, in order, but
# takes milliseconds a path under emulation: only the unsure ones go. The
# entries listed under directories are tracked, or untracked and not
# ignored (ls-files --exclude-standard).
my @asked = grep { $unsure{$_} } @update;
my %ignored;
if (@asked) {
    my $list = "$out.in";
    open(my $in, '>', $list) or fallback();
    print $in map { "./$_\0" } @asked;
    close($in) or fallback();
    my ($status, $text) = git_out({}, $list, 'check-ignore', '--stdin', '-z', '-v', '-n');
    fallback('git check-ignore failed') if $status != 0 && $status != 256;
    my @fields = split(/\0/, $text, -1);
    pop @fields if @fields && $fields[-1] eq '';
    fallback('git check-ignore answered in a way not understood') if @fields != 4 * @asked;
    for my $i (0 .. $#asked) {
        $ignored{$asked[$i]} = 1 if $fields[4 * $i] ne '';
    }
}
open(my $fh, '>', $out) or fallback();
print $fh map { "$_\0" } grep { !$ignored{$_} } @update;
close($fh) or fallback();
open(my $dh, '>', "$out.dirs") or fallback();
print $dh map { "$_\0" } @dirs;
close($dh) or fallback();
print STDERR scalar(@update) + scalar(@dirs), "\n";
exit 0;
