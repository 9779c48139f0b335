// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable, Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title TraceAnchor: Merkle roots of traceability windows, chained so none can be dropped unseen.
/// @notice Only hashes go on chain. Each window's tree follows OpenZeppelin's MerkleProof
/// (leaf = keccak256(keccak256(record)), pairs sorted before hashing), so its proofs check with
/// `verify` here or with any compatible library. Each anchor names the previous window's root:
/// an anchor whose `prevRoot` is not the last recorded root is refused, so windows can be neither
/// dropped nor reordered. The first window's `prevRoot` is zero.
/// @dev Gas per anchor does not depend on the window's size: only the root and its count are stored.
/// The owner is the anchoring key; it can be rotated with the two-step transfer (transferOwnership,
/// then acceptOwnership by the new key).
contract TraceAnchor is Ownable2Step {
    struct Anchor {
        uint64 timestamp; // block time of the anchoring block
        uint64 blockNumber; // anchoring block; zero means "not anchored"
        uint32 leafCount; // records (leaves) in the window
        bytes32 prevRoot; // the root anchored just before this one (zero for the first window)
    }

    /// @notice The anchor recorded for a root (all zero if the root was never anchored).
    mapping(bytes32 root => Anchor) public anchors;
    /// @notice The root anchored last: the `prevRoot` the next anchor must name.
    bytes32 public lastRoot;
    /// @notice Windows anchored so far.
    uint256 public windowCount;

    event Anchored(bytes32 indexed root, bytes32 indexed prevRoot, uint32 leafCount, string windowId, uint64 timestamp);

    error ZeroRoot();
    error AlreadyAnchored(bytes32 root);
    error WrongPrevRoot(bytes32 expected, bytes32 given);
    error NotAnchored(bytes32 root);
    error RenounceDisabled();

    constructor() Ownable(msg.sender) {}

    /// @notice Record `root` as the next window after `prevRoot`; only the owner (anchoring key).
    function anchor(bytes32 root, bytes32 prevRoot, uint32 leafCount, string calldata windowId) external onlyOwner {
        if (root == bytes32(0)) revert ZeroRoot();
        if (anchors[root].blockNumber != 0) revert AlreadyAnchored(root);
        if (prevRoot != lastRoot) revert WrongPrevRoot(lastRoot, prevRoot);
        uint64 timestamp = uint64(block.timestamp);
        anchors[root] = Anchor(timestamp, uint64(block.number), leafCount, prevRoot);
        lastRoot = root;
        unchecked {
            ++windowCount;
        }
        emit Anchored(root, prevRoot, leafCount, windowId, timestamp);
    }

    /// @notice Whether `leaf` is in the tree of the anchored `root` (reverts NotAnchored otherwise).
    function verify(bytes32[] calldata proof, bytes32 root, bytes32 leaf) external view returns (bool) {
        if (anchors[root].blockNumber == 0) revert NotAnchored(root);
        return MerkleProof.verify(proof, root, leaf);
    }

    /// @notice Disabled: a contract without an anchoring key could never anchor again.
    function renounceOwnership() public view override onlyOwner {
        revert RenounceDisabled();
    }
}
