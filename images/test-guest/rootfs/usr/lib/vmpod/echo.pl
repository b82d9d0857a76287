# Echo and discard servers of the vmpod test guest, for perl-base alone (no
# modules: the initramfs carries only the perl binary and its libraries).
#   perl echo.pl tcp PORT      TCP echo, one process per connection; after the
#                              client's FIN everything is echoed, then FIN
#   perl echo.pl udp PORT      UDP echo: each datagram back to its sender
#   perl echo.pl discard PORT  TCP: reads until FIN, then closes
my ($mode, $port) = @ARGV;
die "usage: echo.pl tcp|udp|discard PORT\n" unless $mode && $port;

# Linux x86-64 constants (the Socket module is not in the guest).
my ($AF_INET, $AF_INET6, $SOCK_STREAM, $SOCK_DGRAM) = (2, 10, 1, 2);
my ($SOL_SOCKET, $SO_REUSEADDR) = (1, 2);
my ($IPPROTO_IPV6, $IPV6_V6ONLY) = (41, 26);
$| = 1;

# A socket on [::]:PORT that takes IPv4 too (IPV6_V6ONLY off), or on
# 0.0.0.0:PORT when the kernel has no IPv6.
sub bound {
    my ($type, $proto) = @_;
    my $s;
    if (socket($s, $AF_INET6, $type, $proto)) {
        setsockopt($s, $IPPROTO_IPV6, $IPV6_V6ONLY, pack('i', 0));
        setsockopt($s, $SOL_SOCKET, $SO_REUSEADDR, pack('i', 1));
        # sockaddr_in6: family, port, flow info, address, scope id.
        return $s if bind($s, pack('S n N a16 L', $AF_INET6, $port, 0, "\0" x 16, 0));
        close($s);
    }
    socket($s, $AF_INET, $type, $proto) or die "echo $mode: socket: $!\n";
    setsockopt($s, $SOL_SOCKET, $SO_REUSEADDR, pack('i', 1));
    bind($s, pack('S n a4 x8', $AF_INET, $port, "\0\0\0\0"))
        or die "echo $mode: bind port $port: $!\n";
    return $s;
}

if ($mode eq 'udp') {
    my $s = bound($SOCK_DGRAM, 17);
    print STDERR "vmpod-guest: udp echo on port $port\n";
    while (1) {
        my $buf = '';
        my $peer = recv($s, $buf, 65536, 0);
        next unless defined $peer && length $peer;
        send($s, $buf, 0, $peer);
    }
}

die "echo.pl: unknown mode $mode\n" unless $mode eq 'tcp' || $mode eq 'discard';
my $l = bound($SOCK_STREAM, 6);
listen($l, 1024) or die "echo $mode: listen: $!\n";
$SIG{CHLD} = 'IGNORE';    # the kernel reaps the per-connection children
print STDERR "vmpod-guest: tcp " . ($mode eq "tcp" ? "echo" : $mode) . " on port $port\n";
while (1) {
    my $c;
    unless (accept($c, $l)) {
        select(undef, undef, undef, 0.05);    # e.g. EMFILE: do not spin
        next;
    }
    my $pid = fork();
    if (!defined $pid) {
        close($c);
        next;
    }
    if ($pid == 0) {
        close($l);
        my $buf;
        while (1) {
            my $n = sysread($c, $buf, 65536);
            last unless $n;    # 0: the client's FIN; undef: error
            next if $mode eq 'discard';
            my $off = 0;
            while ($off < $n) {
                my $w = syswrite($c, $buf, $n - $off, $off);
                exit 1 unless defined $w;
                $off += $w;
            }
        }
        shutdown($c, 1);
        close($c);
        exit 0;
    }
    close($c);
}
