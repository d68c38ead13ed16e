# The paths an overlay workspace's export must look at, so git need not
# stat every file of the repo (minutes under emulation for a large one).
# Run by the export script with perl-base alone (no modules but strict),
# in the repo, with GIT_INDEX_FILE set to the export's scratch index.
#
#   perl changed.pl WS SYSCALL OUT
#
# WS is the workspace base (lower/ is the image: repo/ and banger/changed,
# upper/ the overlay's upper directory); SYSCALL the number of lgetxattr;
# OUT the file to write the paths to, NUL-separated. Exit 0: OUT holds
# every path whose index entry may need an update; exit 2: the changes
# cannot be told apart cheaply (too many, or an overlay feature it does not
# follow) and the caller must scan the whole tree.
#
# A path outside OUT is one whose file is the image's (no entry for it in
# upper/), that the host's git saw clean when it packed (not in
# banger/changed), and whose entry in the guest's index is the one the
# host shipped: its entry is right as it stands.
use strict;

my ($ws, $nr, $out) = @ARGV;
my $upper = "$ws/upper";
my $lower = "$ws/lower/repo";
my $limit = 5000;
my %paths;    # path => 1: files and entries to update
my @prefixes; # directories whose index entries (all of them) must be looked at
my @fresh;    # directories in upper/ alone: their untracked files

sub fallback { exit 2 }

sub git_out {
    my ($env, $input, @args) = @_;
    my $pid = open(my $fh, '-|');
    fallback() unless defined $pid;
    if (!$pid) {
        $ENV{$_} = $env->{$_} for keys %$env;
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
    fallback() if $status != 0;
    return grep { $_ ne '' } split(/\0/, $text);
}

# The value of xattr NAME on PATH (not followed), or undef when it has none.
sub xattr {
    my ($path, $name) = @_;
    my ($p, $n, $buf) = ($path, $name, "\0" x 4096);
    my $len = syscall($nr, $p, $n, $buf, 4096);
    if ($len < 0) {
        # ENODATA: no such attribute; anything else: we cannot tell.
        fallback() unless $!{ENODATA};
        return undef;
    }
    return substr($buf, 0, $len);
}

sub is_dir { my @st = lstat($_[0]); return @st && -d _ }

sub add {
    my ($p) = @_;
    fallback() if $p =~ m{/$};
    $paths{$p} = 1;
    fallback() if keys(%paths) + @prefixes + @fresh > $limit;
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
        my @st = lstat("$upper/$p") or fallback();
        if (-d _) {
            # A renamed directory still shows the image's files: not followed.
            fallback() if defined xattr("$upper/$p", 'trusted.overlay.redirect');
            my $opaque = (xattr("$upper/$p", 'trusted.overlay.opaque') // '') eq 'y';
            my @in_lower = lstat("$lower/$p");
            if ($opaque || !@in_lower || !-d _) {
                push @prefixes, $p if @in_lower;
                push @fresh, $p;
                fallback() if keys(%paths) + @prefixes + @fresh > $limit;
            } else {
                walk($p);
            }
        } else {
            add($p);
            push @prefixes, $p if is_dir("$lower/$p");
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
    add($_) for grep { $_ ne '' } split(/\0/, defined $text ? $text : '');
}

# Entries the guest's index changed (git add, rm, commit, reset in the guest).
if (lstat("$upper/.git/index") || lstat("$upper/.git")) {
    my %before;
    if (-e "$lower/.git/index") {
        for (git_list({ GIT_INDEX_FILE => "$lower/.git/index" }, 'ls-files', '-s', '-z')) {
            my ($meta, $p) = split(/\t/, $_, 2);
            $before{$p} .= "$meta;";
        }
    }
    my %now;
    for (git_list({}, 'ls-files', '-s', '-z')) {
        my ($meta, $p) = split(/\t/, $_, 2);
        $now{$p} .= "$meta;";
    }
    for my $p (keys %before, keys %now) {
        add($p) if ($before{$p} // '') ne ($now{$p} // '');
    }
}

my %literal = (GIT_LITERAL_PATHSPECS => '1');
# Every entry under a directory deleted or replaced in the guest.
add($_) for @prefixes ? git_list(\%literal, 'ls-files', '-z', '--cached', '--', @prefixes) : ();
# Untracked files in new directories, ignored ones left out as git add does.
add($_) for @fresh ? git_list(\%literal, 'ls-files', '-z', '--others', '--exclude-standard', '--', @fresh) : ();

# An untracked, ignored path is not added (tracked ones never count as
# ignored). check-ignore answers for every path, in order.
my @all = sort keys %paths;
my $list = "$out.in";
open(my $in, '>', $list) or fallback();
print $in map { "./$_\0" } @all;
close($in) or fallback();
my ($status, $text) = git_out({}, $list, 'check-ignore', '--stdin', '-z', '-v', '-n');
fallback() if $status != 0 && $status != 256;
my @fields = split(/\0/, $text, -1);
pop @fields if @fields && $fields[-1] eq '';
fallback() if @fields != 4 * @all;
open(my $fh, '>', $out) or fallback();
for my $i (0 .. $#all) {
    print $fh "$all[$i]\0" if $fields[4 * $i] eq '';
}
close($fh) or fallback();
exit 0;
